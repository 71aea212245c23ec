package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/meterd/meterd/bench"
)

// The markers around the suite's section of BENCHMARKS.md: --publish
// replaces what is between them, or inserts them after the title.
const (
	mdBegin = "<!-- meterbench:suite:begin (written by `make bench`; edits here are overwritten) -->"
	mdEnd   = "<!-- meterbench:suite:end -->"
	// publishedPlot is the plot's name under the publish directory, as
	// BENCHMARKS.md and the README link it.
	publishedPlot = "standard"
	// ratioTolerance is how far apart compare lets two suites' ratios be.
	ratioTolerance = 0.15
)

// writeResults writes the suite's files into cfg.out, and publishes them
// when asked.
func writeResults(cfg *config, rep *bench.SuiteReport) error {
	if err := os.MkdirAll(filepath.Join(cfg.out, "runs"), 0o755); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(cfg.out, "suite.json"), rep); err != nil {
		return err
	}
	for _, r := range rep.Runs {
		if err := writeJSON(filepath.Join(cfg.out, "runs", r.Mode+"-"+r.System+".json"), r); err != nil {
			return err
		}
	}
	plotErr := bench.WritePlots(rep, filepath.Join(cfg.out, "suite"))
	if plotErr != nil {
		fmt.Fprintln(os.Stderr, "meterbench: plots:", plotErr)
	}
	var table bytes.Buffer
	plot := ""
	if plotErr == nil {
		plot = "suite.svg"
	}
	if err := bench.WriteMarkdown(&table, rep, plot); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.out, "table.md"), table.Bytes(), 0o644); err != nil {
		return err
	}
	if !cfg.publish {
		return nil
	}
	if plotErr != nil {
		return fmt.Errorf("not publishing a suite without its plot: %w", plotErr)
	}
	if err := os.MkdirAll(cfg.publishDir, 0o755); err != nil {
		return err
	}
	for _, ext := range []string{".png", ".svg"} {
		b, err := os.ReadFile(filepath.Join(cfg.out, "suite"+ext))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(cfg.publishDir, publishedPlot+ext), b, 0o644); err != nil {
			return err
		}
	}
	rel, err := filepath.Rel(filepath.Dir(cfg.benchMD), filepath.Join(cfg.publishDir, publishedPlot+".svg"))
	if err != nil {
		return err
	}
	var section bytes.Buffer
	if err := bench.WriteMarkdown(&section, rep, filepath.ToSlash(rel)); err != nil {
		return err
	}
	fmt.Fprintf(&section, "\nAll files of this suite (JSON of every run, the table, the plots): `%s/`. The sections below it are older, one-off measurements.\n",
		filepath.ToSlash(cfg.out))
	return spliceSection(cfg.benchMD, section.String())
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// spliceSection puts section between the markers of the file at path
// (after its first line, the title, when it has none yet).
func spliceSection(path, section string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(old)
	block := mdBegin + "\n\n" + section + "\n" + mdEnd
	if i := strings.Index(s, mdBegin); i >= 0 {
		j := strings.Index(s[i:], mdEnd)
		if j < 0 {
			return fmt.Errorf("%s: %q without %q", path, mdBegin, mdEnd)
		}
		s = s[:i] + block + s[i+j+len(mdEnd):]
	} else {
		title, rest, _ := strings.Cut(s, "\n")
		s = title + "\n\n" + block + "\n" + rest
	}
	return os.WriteFile(path, []byte(s), 0o644)
}

// compare prints each meterd/X ratio of two suites side by side, and exits
// 1 when one differs by more than ratioTolerance.
func compare(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("meterbench compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tol := fs.Float64("tolerance", ratioTolerance, "largest relative difference allowed between the two suites' ratios")
	if err := fs.Parse(args); err != nil || fs.NArg() != 2 {
		fmt.Fprintln(stderr, "usage: meterbench compare [--tolerance 0.15] A/suite.json B/suite.json")
		return 2
	}
	var suites [2]*bench.SuiteReport
	for i := range suites {
		b, err := os.ReadFile(fs.Arg(i))
		if err != nil {
			fmt.Fprintln(stderr, "meterbench compare:", err)
			return 2
		}
		suites[i] = &bench.SuiteReport{}
		if err := json.Unmarshal(b, suites[i]); err != nil {
			fmt.Fprintf(stderr, "meterbench compare: %s: %v\n", fs.Arg(i), err)
			return 2
		}
	}
	type key struct{ mode, system string }
	second := map[key]bench.Ratio{}
	for _, r := range bench.Ratios(suites[1]) {
		second[key{r.Mode, r.System}] = r
	}
	fmt.Fprintln(stdout, "| mode | system | meterd/X events/s A | B | differ | meterd/X p99 A | B | differ |")
	fmt.Fprintln(stdout, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	worst, missing := 0.0, 0
	for _, a := range bench.Ratios(suites[0]) {
		b, ok := second[key{a.Mode, a.System}]
		if !ok {
			missing++
			fmt.Fprintf(stdout, "| %s | %s | %.2f | - | only in A | %.2f | - | |\n", a.Mode, a.System, a.Throughput, a.P99)
			continue
		}
		dt := relDiff(a.Throughput, b.Throughput)
		worst = max(worst, dt)
		p99 := "fell behind in both | | |"
		if !(math.IsNaN(a.P99) && math.IsNaN(b.P99)) { // a p99 ratio is given in both, or it is a difference
			dp := relDiff(a.P99, b.P99)
			worst = max(worst, dp)
			p99 = fmt.Sprintf("%.3g | %.3g | %.1f%% |", a.P99, b.P99, 100*dp)
		}
		fmt.Fprintf(stdout, "| %s | %s | %.3g | %.3g | %.1f%% | %s\n", a.Mode, a.System, a.Throughput, b.Throughput, 100*dt, p99)
	}
	fmt.Fprintf(stdout, "\nlargest difference %.1f%% (tolerance %.0f%%)\n", 100*worst, 100**tol)
	if worst > *tol || missing > 0 {
		return 1
	}
	return 0
}

// relDiff is |a-b| over the smaller of the two; NaN counts as infinitely far.
func relDiff(a, b float64) float64 {
	d := math.Abs(a-b) / math.Min(a, b)
	if math.IsNaN(d) {
		return math.Inf(1)
	}
	return d
}

// report writes a suite's results again from its suite.json (table,
// plots, one JSON per run), into the same directory, and publishes them
// with --publish: how a suite's table is remade without running it again.
func report(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("meterbench report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &config{}
	fs.BoolVar(&cfg.publish, "publish", false, "put the table at the top of --benchmarks-md and the plot in bench/results/standard.{png,svg}")
	fs.StringVar(&cfg.benchMD, "benchmarks-md", "BENCHMARKS.md", "the file --publish updates")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: meterbench report [--publish] DIR/suite.json")
		return 2
	}
	b, err := os.ReadFile(fs.Arg(0))
	rep := &bench.SuiteReport{}
	if err == nil {
		err = json.Unmarshal(b, rep)
	}
	if err != nil {
		fmt.Fprintln(stderr, "meterbench report:", err)
		return 2
	}
	cfg.out = filepath.Dir(fs.Arg(0))
	cfg.publishDir = filepath.Join(filepath.Dir(cfg.benchMD), "bench", "results")
	if err := writeResults(cfg, rep); err != nil {
		fmt.Fprintln(stderr, "meterbench report:", err)
		return 1
	}
	return 0
}

// noopServer serves the no-op endpoint (bench.ServeNoop) on --listen.
func noopServer(args []string) int {
	fs := flag.NewFlagSet("meterbench noop-server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on (loopback)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil || !isLoopback(host) {
		fmt.Fprintf(os.Stderr, "meterbench noop-server: --listen %q: want a loopback host:port\n", *listen)
		return 2
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "meterbench noop-server:", err)
		return 1
	}
	fmt.Fprintln(os.Stderr, "meterbench noop-server: listening on", ln.Addr())
	if err := bench.ServeNoop(ln); err != nil {
		fmt.Fprintln(os.Stderr, "meterbench noop-server:", err)
		return 1
	}
	return 0
}
