package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// The markdown of a suite: the machine, the command, one table of every
// run with the ratios meterd/X from the same suite, and a sentence for each
// mode in which meterd loses. cmd/meterbench writes it as table.md and puts
// it at the top of BENCHMARKS.md.

// Ratio is meterd's number over a system's, in one mode of one suite.
type Ratio struct {
	Mode, System string
	Throughput   float64 // meterd events/s / X events/s: above 1, meterd is faster
	P99          float64 // meterd p99 / X p99: below 1, meterd answers sooner; NaN when either fell behind
	// Behind names the systems that fell behind an open loop's offered
	// rate ("" none): their latency grows with the run's length (the
	// backlog), so a p99 ratio with them says nothing and is left out.
	Behind string
}

// keptUpFraction is the share of an open loop's offered rate a system must
// answer to have kept up with it.
const keptUpFraction = 0.95

// fellBehind reports whether r is an open-loop run that did not keep up.
func fellBehind(r *RunReport) bool {
	return r.RateOffered > 0 && r.EventsPerSecond < keptUpFraction*r.RateOffered
}

// Ratios returns meterd/X for every other completed run of a mode that has
// a completed meterd run; the no-op floor is left out (it is no wallet).
func Ratios(s *SuiteReport) []Ratio {
	var out []Ratio
	for _, m := range s.modes() {
		md := s.run(m, SysMeterd)
		if md == nil {
			continue
		}
		for i := range s.Runs {
			r := &s.Runs[i]
			if r.Mode != m || r.System == SysMeterd || r.System == SysNoop || r.Failed != "" {
				continue
			}
			q := Ratio{Mode: m, System: r.System,
				Throughput: div(md.EventsPerSecond, r.EventsPerSecond), P99: div(md.Latency.P99, r.Latency.P99)}
			var behind []string
			for _, x := range []*RunReport{md, r} {
				if fellBehind(x) {
					behind = append(behind, x.System)
				}
			}
			if len(behind) > 0 {
				q.P99, q.Behind = math.NaN(), strings.Join(behind, " and ")
			}
			out = append(out, q)
		}
	}
	return out
}

func div(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

// modes returns the modes in the order they ran.
func (s *SuiteReport) modes() []string {
	var ms []string
	for _, r := range s.Runs {
		if !slices.Contains(ms, r.Mode) {
			ms = append(ms, r.Mode)
		}
	}
	return ms
}

// run returns the completed run of a system in a mode, or nil.
func (s *SuiteReport) run(mode, system string) *RunReport {
	for i := range s.Runs {
		if r := &s.Runs[i]; r.Mode == mode && r.System == system && r.Failed == "" {
			return r
		}
	}
	return nil
}

// WriteMarkdown writes the suite's section: heading, machine, command,
// table, and the modes meterd loses.
func WriteMarkdown(w io.Writer, s *SuiteReport, plot string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "## Suite %q, one run (%s)\n\n", s.Suite, s.Started.Format("2006-01-02 15:04 UTC"))
	mach := s.Machine
	fmt.Fprintf(&b, "Machine: %d CPUs (%s), %.0f GiB, Linux %s, %s %s. Every system ran alone on it, one after the other, with the generator on the same CPUs.\n\n",
		mach.CPUs, orDash(mach.CPUModel), float64(mach.MemoryBytes)/(1<<30), orDash(mach.Kernel), mach.GoVersion, mach.OS)
	fmt.Fprintf(&b, "Command: `%s`\n\n", s.Command)
	b.WriteString(modeLegend(s))
	b.WriteString("| mode | system | events/s | p50 ms | p99 ms | p99.9 ms | server CPU s per M events | generator CPU s per M events | check | meterd/X events/s | meterd/X p99 |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |\n")
	ratios := Ratios(s)
	for _, r := range s.Runs {
		name := r.System
		if r.System == SysRedisEverysec {
			name += " (not durable per event)"
		}
		if r.System == SysNoop {
			name += " (floor)"
		}
		if r.Failed != "" {
			fmt.Fprintf(&b, "| %s | %s | failed: %s | | | | | | | | |\n", r.Mode, name, oneLine(r.Failed))
			continue
		}
		check := "ok"
		switch {
		case r.System == SysNoop:
			check = "n/a"
		case !r.Check.OK:
			check = fmt.Sprintf("**%d problems**", r.Check.ProblemsTotal)
		}
		if r.Errors > 0 {
			check += fmt.Sprintf(", %d requests failed", r.Errors)
		}
		tput, p99 := "", ""
		for _, q := range ratios {
			if q.Mode == r.Mode && q.System == r.System {
				tput, p99 = fmtRatio(q.Throughput), fmtRatio(q.P99)
				if q.Behind != "" {
					p99 = q.Behind + " fell behind"
				}
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Mode, name,
			fmtCount(r.EventsPerSecond), fmtMs(r.Latency.P50), fmtMs(r.Latency.P99), fmtMs(r.Latency.P999),
			fmtCPU(r.ServerCPUPerMillion), fmtCPU(r.GeneratorCPUPerMillion), check, tput, p99)
	}
	b.WriteString("\nmeterd/X events/s above 1: meterd did more; meterd/X p99 below 1: meterd answered sooner. " +
		"In the open loop every system that keeps up does the offered rate, and latency is what differs; " +
		"one that answers less than 95% of it fell behind, its latency is its growing backlog, and no p99 ratio is given with it.\n\n")
	for _, line := range Losses(s) {
		b.WriteString("- " + line + "\n")
	}
	if plot != "" {
		fmt.Fprintf(&b, "\n![throughput and latency over time, each system](%s)\n", plot)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// modeLegend says what each mode of the suite is.
func modeLegend(s *SuiteReport) string {
	var b strings.Builder
	b.WriteString("Modes:\n\n")
	for _, m := range s.modes() {
		var r *RunReport
		for i := range s.Runs {
			if s.Runs[i].Mode == m {
				r = &s.Runs[i]
				break
			}
		}
		loop := "closed loop"
		if r.RateOffered > 0 {
			loop = fmt.Sprintf("open loop at %s events/s offered (latency from each request's intended send time)", fmtCount(r.RateOffered))
		}
		extra := ""
		if r.Workload != "" {
			extra = "; " + r.Workload
		}
		measured := fmt.Sprintf("%.0f s measured after %.0f s warmup", r.DurationS, r.WarmupS)
		if r.Rounds > 1 {
			measured = fmt.Sprintf("%.0f s measured per system, in %d turns of %.0f s (the systems alternating, each turn on a fresh start after %.0f s warmup)",
				r.DurationS, r.Rounds, r.DurationS/float64(r.Rounds), r.WarmupS)
		}
		fmt.Fprintf(&b, "- **%s**: %d event(s) per request, %d clients, %d %s customer(s), %s, %s%s.\n",
			m, r.Batch, r.Clients, r.Customers, r.Dist, loop, measured, extra)
	}
	b.WriteString("\n")
	return b.String()
}

// Losses returns one plain sentence for each mode in which a durable
// baseline beats meterd: more events per second in a closed loop, or a
// lower p99 in an open loop (where every system is offered the same rate).
// redis-everysec is named apart: it is not durable per event.
func Losses(s *SuiteReport) []string {
	var out []string
	for _, m := range s.modes() {
		md := s.run(m, SysMeterd)
		if md == nil {
			continue
		}
		var durable, everysec []string
		baselines := 0
		for _, q := range Ratios(s) {
			if q.Mode != m {
				continue
			}
			baselines++
			x := s.run(m, q.System)
			var lost bool
			var what string
			switch {
			case md.RateOffered > 0 && q.Behind != "":
				// Whoever kept up wins; if both fell behind, the one that
				// answered more.
				lost = fellBehind(md) && (!fellBehind(x) || q.Throughput < 1)
				what = fmt.Sprintf("%s (%s events/s of the %s offered, against meterd's %s)", q.System,
					fmtCount(x.EventsPerSecond), fmtCount(md.RateOffered), fmtCount(md.EventsPerSecond))
			case md.RateOffered > 0:
				lost = q.P99 > 1
				what = fmt.Sprintf("%s (p99 %s ms against meterd's %s ms)", q.System, fmtMs(x.Latency.P99), fmtMs(md.Latency.P99))
			default:
				lost = q.Throughput < 1
				what = fmt.Sprintf("%s (%s events/s against meterd's %s)", q.System, fmtCount(x.EventsPerSecond), fmtCount(md.EventsPerSecond))
			}
			if !lost {
				continue
			}
			if q.System == SysRedisEverysec {
				everysec = append(everysec, what)
			} else {
				durable = append(durable, what)
			}
		}
		if len(durable) > 0 {
			out = append(out, fmt.Sprintf("**%s: meterd loses** to %s.", m, strings.Join(durable, " and ")))
		}
		if len(everysec) > 0 {
			out = append(out, fmt.Sprintf("%s: %s beats meterd, without being durable per event (an acknowledged charge can be lost in the last second before a crash).", m, everysec[0]))
		}
		if len(durable) == 0 && len(everysec) == 0 {
			if baselines == 0 {
				out = append(out, fmt.Sprintf("%s: meterd alone (no baseline runs this mode).", m))
			} else {
				out = append(out, fmt.Sprintf("%s: meterd wins against every baseline.", m))
			}
		}
	}
	return out
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return strings.ReplaceAll(s, "|", "/")
}

func fmtRatio(x float64) string {
	switch {
	case math.IsNaN(x) || math.IsInf(x, 0):
		return "-"
	case x < 0.1:
		return fmt.Sprintf("%.2gx", x) // two significant digits: 0.0021x, not 0.00x
	}
	return fmt.Sprintf("%.2fx", x)
}

func fmtMs(x float64) string {
	switch {
	case x >= 100:
		return fmt.Sprintf("%.0f", x)
	case x >= 10:
		return fmt.Sprintf("%.1f", x)
	}
	return fmt.Sprintf("%.2f", x)
}

func fmtCPU(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", x)
}

// fmtCount writes a count with thousands separators.
func fmtCount(x float64) string {
	n := int64(math.Round(x))
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
