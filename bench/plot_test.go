package bench

import (
	"bytes"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gonum.org/v1/plot/vg"
)

// plotTestSizeMax is what the README allows an embedded image.
const plotTestSizeMax = 200 << 10

var (
	plotTestModes   = []string{"batch", "single", "hot", "open"}
	plotTestSystems = []string{"meterd", "noop", "redis-always", "redis-everysec", "postgres-plain", "postgres-strong"}
)

// plotTestSuite is a suite of every test mode and system, seconds seconds
// each, with made-up but plausible numbers spanning a few decades, seconds
// without answers in every run (every other one in one run, to leave lone
// seconds), and a run without data to leave out.
func plotTestSuite(seconds int) *SuiteReport {
	s := &SuiteReport{Suite: "standard"}
	for m, mode := range plotTestModes {
		for k, system := range plotTestSystems {
			r := RunReport{Mode: mode, System: system, DurationS: float64(seconds)}
			if mode == "open" {
				r.RateOffered = 5000 // the one mode whose no-op floor is drawn
			}
			base := 1e3 * math.Pow(3, float64(k)) * float64(m+1)
			for i := range seconds {
				wobble := 1 + 0.2*math.Sin(float64(i+k+m))
				sec := SecondMs{
					T:               float64(i + 1),
					EventsPerSecond: base * wobble,
					P50:             0.05 * math.Pow(4, float64(k)) * wobble,
					P99:             0.4 * math.Pow(4, float64(k)) * wobble * wobble,
				}
				if (i+k)%9 == 8 || (m == 3 && k == 1 && i%2 == 1) { // a stall: nothing answered in that second
					sec.EventsPerSecond, sec.P50, sec.P99 = 0, 0, 0
				}
				r.PerSecond = append(r.PerSecond, sec)
			}
			s.Runs = append(s.Runs, r)
		}
	}
	s.Runs = append(s.Runs, RunReport{Mode: "failed-mode", System: "meterd", Failed: "did not start"})
	return s
}

func TestWritePlots(t *testing.T) {
	base := filepath.Join(t.TempDir(), "suite")
	if err := WritePlots(plotTestSuite(20), base); err != nil {
		t.Fatal(err)
	}

	pngBytes, err := os.ReadFile(base + ".png")
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(pngBytes))
	if err != nil {
		t.Fatalf("PNG: %v", err)
	}
	if _, ok := img.(*image.Paletted); !ok {
		t.Errorf("PNG decodes as %T, want a paletted image", img)
	}
	w, h := img.Bounds().Dx(), img.Bounds().Dy()
	rows := len(plotTestModes)
	wantAspect := float64(plotWidth) / float64(plotLegendPad+plotLegendLine+plotRowHeight*vg.Length(rows))
	if got := float64(w) / float64(h); math.Abs(got-wantAspect) > 0.01 {
		t.Errorf("PNG %dx%d: aspect %.3f, want %.3f", w, h, got, wantAspect)
	}
	if wantW := int(math.Round(float64(plotWidth) / 72 * plotDPI)); w != wantW {
		t.Errorf("PNG width %d pixels, want %d", w, wantW)
	}

	svgBytes, err := os.ReadFile(base + ".svg")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PNG %dx%d: %d bytes; SVG: %d bytes", w, h, len(pngBytes), len(svgBytes))
	for name, n := range map[string]int{"PNG": len(pngBytes), "SVG": len(svgBytes)} {
		if n > plotTestSizeMax {
			t.Errorf("%s: %d bytes, over the README's %d", name, n, plotTestSizeMax)
		}
	}

	svg := string(svgBytes)
	for _, name := range append(plotTestSystems, plotTestModes...) {
		if !strings.Contains(svg, name) {
			t.Errorf("SVG does not name %q", name)
		}
	}
	for _, title := range []string{"batch: throughput (events/s)", "open: p99 latency (ms)"} {
		if !strings.Contains(svg, title) {
			t.Errorf("SVG has no title %q", title)
		}
	}
	if strings.Contains(svg, "failed-mode") {
		t.Error("SVG draws a mode without per-second data")
	}
}

func TestWritePlotsNoData(t *testing.T) {
	base := filepath.Join(t.TempDir(), "suite")
	for name, s := range map[string]*SuiteReport{
		"nil":     nil,
		"no runs": {},
		"no data": {Runs: []RunReport{{Mode: "batch", System: "meterd", Failed: "did not start"}}},
	} {
		err := WritePlots(s, base)
		if err == nil || !strings.Contains(err.Error(), "no run with per-second data") {
			t.Errorf("%s: got %v, want the no-data error", name, err)
		}
	}
	if _, err := os.Stat(base + ".png"); !os.IsNotExist(err) {
		t.Errorf("a suite without data wrote %s.png (%v)", base, err)
	}
}

// TestWritePlotsStalled draws a suite whose only run never answered: a
// throughput line at 0, and latency panels with nothing to put on a log
// scale.
func TestWritePlotsStalled(t *testing.T) {
	r := RunReport{Mode: "batch", System: "meterd"}
	for i := range 5 {
		r.PerSecond = append(r.PerSecond, SecondMs{T: float64(i + 1)})
	}
	base := filepath.Join(t.TempDir(), "suite")
	if err := WritePlots(&SuiteReport{Runs: []RunReport{r}}, base); err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{".png", ".svg"} {
		if fi, err := os.Stat(base + ext); err != nil || fi.Size() == 0 {
			t.Errorf("%s%s: %v", base, ext, err)
		}
	}
}

// TestWritePlotsManySystems draws more systems than one legend line holds
// (and than there are colours): the legend wraps, keeping every system once
// and in order.
func TestWritePlotsManySystems(t *testing.T) {
	s := &SuiteReport{}
	var names []string
	for k := range 14 {
		name := fmt.Sprintf("postgres-variant-%02d", k)
		names = append(names, name)
		r := RunReport{Mode: "batch", System: name}
		for i := range 5 {
			r.PerSecond = append(r.PerSecond, SecondMs{T: float64(i + 1), EventsPerSecond: float64(1000 * (k + 1)), P50: 1, P99: float64(k + 2)})
		}
		s.Runs = append(s.Runs, r)
	}
	lines := plotFigure{systems: names}.legendLines()
	if len(lines) < 2 {
		t.Errorf("legend of %d long names on %d line(s), want it wrapped", len(names), len(lines))
	}
	var order []int
	for _, line := range lines {
		order = append(order, line...)
	}
	for i, k := range order {
		if k != i || len(order) != len(names) {
			t.Fatalf("legend lines %v, want 0..%d in order", lines, len(names)-1)
		}
	}

	base := filepath.Join(t.TempDir(), "suite")
	if err := WritePlots(s, base); err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile(base + ".svg")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if !bytes.Contains(svg, []byte(name)) {
			t.Errorf("SVG does not name %q", name)
		}
	}
}

func TestFormatCountPlot(t *testing.T) {
	for n, want := range map[float64]string{0: "0", 500: "500", 1000: "1k", 250000: "250k", 1.25e6: "1.25M", 3e6: "3M"} {
		if got := formatCount(n); got != want {
			t.Errorf("formatCount(%v) = %q, want %q", n, got, want)
		}
	}
}
