package bench

// The suite's figure (suite.png, suite.svg) is drawn with gonum.org/v1/plot,
// the plotting library the benchmark's brief names: pure Go, no cgo and no
// external tool, and one drawing writes both the PNG the README embeds and
// the SVG.

import (
	"bufio"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"os"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The figure's geometry and type. A 4-mode PNG at plotDPI is 1152 x 1037
// pixels; paletted (plotPNG), it is about 80 KB, well under the 200 KB the
// README allows an embedded image (as 24-bit RGB it would be about 260 KB).
const (
	plotColumns       = 3 // throughput, p50, p99
	plotWidth         = 12 * vg.Inch
	plotRowHeight     = 2.6 * vg.Inch
	plotLegendLine    = 0.25 * vg.Inch // a line of the legend above the rows, naming the systems
	plotLegendPad     = 0.15 * vg.Inch // above and below the legend's lines
	plotDPI           = 96
	plotPad           = 3 * vg.Millimeter // around the panels; twice that between them
	plotTitleSize     = 10                // points
	plotLabelSize     = 9
	plotTickSize      = 8
	plotLineWidth     = 1.5  // points
	plotGlyphRadius   = 2.5  // points; a second between two skipped ones
	plotGridWidth     = 0.25 // points
	plotLegendThumb   = 32   // points: the sample line before each system's name
	plotLegendGap     = 5    // points between a sample line and its name
	plotLegendSpacing = 18   // points between one name and the next sample
	plotShadesBlack   = 32   // palette entries from white to black (text, axes, grid)
	plotShadesColor   = 16   // from white to each line colour
)

// plotColors are the Okabe-Ito colours (colour-blind safe), without the
// yellow that vanishes on white. A system keeps its colour in every panel.
var plotColors = []color.Color{
	color.RGBA{R: 0x00, G: 0x72, B: 0xb2, A: 0xff}, // blue
	color.RGBA{R: 0xd5, G: 0x5e, B: 0x00, A: 0xff}, // vermillion
	color.RGBA{R: 0x00, G: 0x9e, B: 0x73, A: 0xff}, // bluish green
	color.RGBA{R: 0xcc, G: 0x79, B: 0xa7, A: 0xff}, // reddish purple
	color.RGBA{R: 0xe6, G: 0x9f, B: 0x00, A: 0xff}, // orange
	color.RGBA{R: 0x56, G: 0xb4, B: 0xe9, A: 0xff}, // sky blue
	color.RGBA{R: 0x00, G: 0x00, B: 0x00, A: 0xff}, // black
}

// plotDashes tell the systems apart in greyscale: one pattern per system, in
// points (nil: solid). Its length differs from plotColors' so that colour
// and pattern together stay distinct for many more systems than either.
var plotDashes = [][]vg.Length{
	nil,
	{6, 3},
	{1.5, 2},
	{8, 3, 1.5, 3},
	{3, 3},
	{8, 3, 1.5, 3, 1.5, 3},
}

// plotGlyphs mark a lone second (both neighbours skipped), where a line has
// nothing to join, in the system's colour.
var plotGlyphs = []draw.GlyphDrawer{
	draw.CircleGlyph{},
	draw.SquareGlyph{},
	draw.TriangleGlyph{},
	draw.PyramidGlyph{},
	draw.CrossGlyph{},
	draw.PlusGlyph{},
	draw.RingGlyph{},
}

// plotFont is the figure's typeface (bundled with gonum/plot; an SVG names
// it, "Liberation Sans", and a viewer without it substitutes its own).
var plotFont = font.Font{Typeface: "Liberation", Variant: "Sans"}

// plotPanel is one column of a row: what it shows and how.
type plotPanel struct {
	title   string // after "<mode>: "
	value   func(SecondMs) float64
	latency bool // log scale; seconds without answers (value <= 0) skipped
}

var plotPanels = [plotColumns]plotPanel{
	{"throughput (events/s)", func(s SecondMs) float64 { return s.EventsPerSecond }, false},
	{"p50 latency (ms)", func(s SecondMs) float64 { return s.P50 }, true},
	{"p99 latency (ms)", func(s SecondMs) float64 { return s.P99 }, true},
}

// WritePlots draws the suite as one figure, written as base+".png" and base+".svg".
//
// The figure has one row per mode, in the order the modes first appear in
// s.Runs, and three panels per row: throughput (events/s), p50 and p99
// latency (ms), each against the seconds of the measured part. Each system
// is one line in every panel, with the same colour and dash pattern
// throughout, named once in a legend above the rows. Latency axes are
// logarithmic; a second without answers (latency 0) leaves a gap in the
// latency lines and counts as 0 in the throughput line. Runs without
// per-second data are left out, and so is the no-op floor of a closed-loop
// mode; a suite with none is an error.
func WritePlots(s *SuiteReport, base string) error {
	rows, systems := plotLayout(s)
	if len(rows) == 0 {
		return errors.New("plots: the suite has no run with per-second data")
	}
	plots := make([][]*plot.Plot, len(rows))
	for i, row := range rows {
		var err error
		if plots[i], err = plotRow(row, systems); err != nil {
			return fmt.Errorf("plots: mode %s: %w", row.mode, err)
		}
	}
	names := make([]string, len(systems))
	for name, i := range systems {
		names[i] = name
	}
	fig := plotFigure{plots: plots, systems: names}
	w, h := fig.size()

	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(plotDPI), vgimg.UseBackgroundColor(color.White))
	fig.draw(draw.New(img))
	enc := png.Encoder{CompressionLevel: png.BestCompression}
	if err := writePlotFile(base+".png", func(w io.Writer) error { return enc.Encode(w, plotPNG(img.Image())) }); err != nil {
		return err
	}

	svg := vgsvg.New(w, h) // fonts named, not embedded
	fig.draw(draw.New(svg))
	return writePlotFile(base+".svg", func(w io.Writer) error {
		_, err := svg.WriteTo(w)
		return err
	})
}

// plotRowData is one mode's runs with data, in the order run.
type plotRowData struct {
	mode string
	runs []*RunReport
	tMax float64 // the last second of the longest run
}

// plotLayout groups the runs with per-second data by mode, modes in order of
// first appearance, and numbers the systems in order of first appearance:
// the number picks a system's colour, dashes and glyph.
func plotLayout(s *SuiteReport) (rows []plotRowData, systems map[string]int) {
	systems = make(map[string]int)
	if s == nil {
		return nil, systems
	}
	rowOf := make(map[string]int)
	for i := range s.Runs {
		r := &s.Runs[i]
		if len(r.PerSecond) == 0 || (r.System == SysNoop && r.RateOffered == 0) {
			// The floor of a closed loop runs an order of magnitude above
			// every wallet (and out of events within seconds): drawn, it
			// would flatten their lines. The table has its number.
			continue
		}
		j, ok := rowOf[r.Mode]
		if !ok {
			j = len(rows)
			rowOf[r.Mode] = j
			rows = append(rows, plotRowData{mode: r.Mode})
		}
		rows[j].runs = append(rows[j].runs, r)
		for _, sec := range r.PerSecond {
			if !math.IsInf(sec.T, 0) && !math.IsNaN(sec.T) {
				rows[j].tMax = math.Max(rows[j].tMax, sec.T)
			}
		}
		if _, ok := systems[r.System]; !ok {
			systems[r.System] = len(systems)
		}
	}
	return rows, systems
}

// plotRow makes one mode's three panels.
func plotRow(row plotRowData, systems map[string]int) ([]*plot.Plot, error) {
	ps := make([]*plot.Plot, plotColumns)
	for c, panel := range plotPanels {
		p := newPlotPanel(row.mode + ": " + panel.title)
		p.X.Min, p.X.Max = 0, math.Max(row.tMax, 1)
		yMin, yMax := math.Inf(1), math.Inf(-1)
		for _, r := range row.runs {
			segs := plotSegments(r.PerSecond, panel.value, panel.latency)
			for _, seg := range segs {
				for _, xy := range seg {
					yMin, yMax = math.Min(yMin, xy.Y), math.Max(yMax, xy.Y)
				}
				ls, err := plotSeries(seg, systems[r.System])
				if err != nil {
					return nil, fmt.Errorf("%s, %s: %w", r.System, panel.title, err)
				}
				p.Add(ls)
			}
		}
		if panel.latency {
			plotLogY(p, yMin, yMax)
		} else {
			p.Y.Tick.Marker = plot.TickerFunc(plotCountTicks)
			p.Y.Min, p.Y.Max = 0, 1
			if yMax > 0 {
				p.Y.Max = yMax
			}
		}
		ps[c] = p
	}
	return ps, nil
}

// newPlotPanel is an empty panel with the figure's type sizes and a grid.
func newPlotPanel(title string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font = font.From(plotFont, plotTitleSize)
	p.Title.Padding = vg.Points(plotTickSize / 2)
	p.X.Label.Text = "time (s)"
	p.X.Label.TextStyle.Font = font.From(plotFont, plotLabelSize)
	p.X.Tick.Label.Font = font.From(plotFont, plotTickSize)
	p.Y.Tick.Label.Font = font.From(plotFont, plotTickSize)
	p.X.Tick.Length = vg.Points(plotTickSize / 2)
	p.Y.Tick.Length = vg.Points(plotTickSize / 2)
	grid := plotter.NewGrid()
	grid.Vertical.Color = color.Gray{Y: 0xdd}
	grid.Vertical.Width = vg.Points(plotGridWidth)
	grid.Horizontal = grid.Vertical
	p.Add(grid)
	return p
}

// plotSegments cuts a run's seconds into the stretches to draw as lines.
// Non-finite values are skipped, and with skipZero so are values <= 0 (a
// second without answers has no latency); each skip ends a stretch.
func plotSegments(secs []SecondMs, value func(SecondMs) float64, skipZero bool) []plotter.XYs {
	var segs []plotter.XYs
	var cur plotter.XYs
	for _, sec := range secs {
		v := value(sec)
		ok := !math.IsNaN(v) && !math.IsInf(v, 0) && !math.IsNaN(sec.T) && !math.IsInf(sec.T, 0)
		if ok && skipZero && v <= 0 {
			ok = false
		}
		if !ok {
			if len(cur) > 0 {
				segs = append(segs, cur)
				cur = nil
			}
			continue
		}
		cur = append(cur, plotter.XY{X: sec.T, Y: v})
	}
	if len(cur) > 0 {
		segs = append(segs, cur)
	}
	return segs
}

// plotSeries draws one stretch of a system's seconds: a line, or a glyph
// for a lone second.
func plotSeries(seg plotter.XYs, system int) (plot.Plotter, error) {
	if len(seg) == 1 {
		sc, err := plotter.NewScatter(seg)
		if err != nil {
			return nil, err
		}
		sc.GlyphStyle = plotGlyphStyle(system)
		return sc, nil
	}
	l, err := plotter.NewLine(seg)
	if err != nil {
		return nil, err
	}
	l.LineStyle = plotLineStyle(system)
	return l, nil
}

func plotLineStyle(system int) draw.LineStyle {
	return draw.LineStyle{
		Color:  plotColors[system%len(plotColors)],
		Width:  vg.Points(plotLineWidth),
		Dashes: plotDashes[system%len(plotDashes)],
	}
}

func plotGlyphStyle(system int) draw.GlyphStyle {
	return draw.GlyphStyle{
		Color:  plotColors[system%len(plotColors)],
		Radius: vg.Points(plotGlyphRadius),
		Shape:  plotGlyphs[system%len(plotGlyphs)],
	}
}

// plotLogY puts a latency axis on a log scale spanning whole decades
// around [min, max] (plot.LogTicks labels only powers of ten), or leaves it
// linear, from 0, when the panel has no value to draw.
func plotLogY(p *plot.Plot, min, max float64) {
	if !(min > 0) || math.IsInf(max, 0) {
		p.Y.Min, p.Y.Max = 0, 1
		return
	}
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.TickerFunc(plotLogTicks)
	p.Y.Min = math.Pow(10, math.Floor(math.Log10(min)))
	p.Y.Max = math.Pow(10, math.Ceil(math.Log10(max)))
	if p.Y.Max <= p.Y.Min {
		p.Y.Max = p.Y.Min * 10
	}
}

// plotLogTicks are plot.LogTicks within [min, max]. LogTicks starts from
// 10^int(log10(min)), and math.Log10(0.1) is a hair above -1, which int
// truncates to 0: the decade from 0.1 would lose its label. A min a little
// lower, and the ticks it adds below min dropped, gets it back.
func plotLogTicks(min, max float64) []plot.Tick {
	const nudge = 1e-9
	all := plot.LogTicks{Prec: -1}.Ticks(min*(1-nudge), max)
	ticks := all[:0]
	for _, t := range all {
		if t.Value >= min*(1-nudge) && t.Value <= max*(1+nudge) {
			ticks = append(ticks, t)
		}
	}
	return ticks
}

// plotCountTicks are plot.DefaultTicks labelled with k and M ("250k",
// "1.2M") rather than six or seven digits.
func plotCountTicks(min, max float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i, t := range ticks {
		if t.IsMinor() {
			continue
		}
		ticks[i].Label = formatCount(t.Value)
	}
	return ticks
}

// formatCount writes n with at most four significant digits, in thousands
// (k) or millions (M) from 1000 on.
func formatCount(n float64) string {
	const sigDigits = 4
	switch a := math.Abs(n); {
	case a >= 1e6:
		return strconv.FormatFloat(n/1e6, 'g', sigDigits, 64) + "M"
	case a >= 1e3:
		return strconv.FormatFloat(n/1e3, 'g', sigDigits, 64) + "k"
	}
	return strconv.FormatFloat(n, 'g', sigDigits, 64)
}

// plotFigure is the grid of panels under the systems' legend.
type plotFigure struct {
	plots   [][]*plot.Plot // [row][column]
	systems []string       // by number
}

func (f plotFigure) size() (w, h vg.Length) {
	legend := plotLegendPad + vg.Length(len(f.legendLines()))*plotLegendLine
	return plotWidth, legend + vg.Length(len(f.plots))*plotRowHeight
}

func (f plotFigure) draw(dc draw.Canvas) {
	lines := f.legendLines()
	legend := dc
	legend.Min.Y = dc.Max.Y - plotLegendPad - vg.Length(len(lines))*plotLegendLine
	f.drawLegend(legend, lines)

	grid := dc
	grid.Max.Y = legend.Min.Y
	tiles := draw.Tiles{
		Rows: len(f.plots), Cols: plotColumns,
		PadX: 2 * plotPad, PadY: 2 * plotPad,
		PadTop: plotPad, PadBottom: plotPad, PadLeft: plotPad, PadRight: plotPad,
	}
	canvases := plot.Align(f.plots, tiles, grid)
	for i, row := range f.plots {
		for j, p := range row {
			p.Draw(canvases[i][j])
		}
	}
}

// legendStyle is the type of the systems' names.
func legendStyle() text.Style {
	return text.Style{
		Color:   color.Black,
		Font:    font.From(plotFont, plotLabelSize),
		XAlign:  draw.XLeft,
		YAlign:  draw.YCenter,
		Handler: plot.DefaultTextHandler,
	}
}

// legendEntryWidth is one system's sample line and name, without the
// spacing to the next.
func legendEntryWidth(sty text.Style, name string) vg.Length {
	return vg.Points(plotLegendThumb+plotLegendGap) + sty.Width(name)
}

// legendLines splits the systems (their numbers) into the legend's lines,
// as many on each as the figure's width holds: one line up to a dozen
// systems or so.
func (f plotFigure) legendLines() [][]int {
	sty := legendStyle()
	avail := plotWidth - 2*plotPad
	var lines [][]int
	var line []int
	var width vg.Length
	for i, name := range f.systems {
		w := legendEntryWidth(sty, name)
		if len(line) > 0 && width+vg.Points(plotLegendSpacing)+w > avail {
			lines = append(lines, line)
			line, width = nil, 0
		}
		if len(line) > 0 {
			width += vg.Points(plotLegendSpacing)
		}
		line = append(line, i)
		width += w
	}
	return append(lines, line)
}

// drawLegend names the systems, each after a sample of its line, on lines
// centred in c.
func (f plotFigure) drawLegend(c draw.Canvas, lines [][]int) {
	sty := legendStyle()
	thumb, gap, spacing := vg.Points(plotLegendThumb), vg.Points(plotLegendGap), vg.Points(plotLegendSpacing)
	y := c.Max.Y - plotLegendPad/2 - plotLegendLine/2
	for _, line := range lines {
		var width vg.Length
		for k, i := range line {
			if k > 0 {
				width += spacing
			}
			width += legendEntryWidth(sty, f.systems[i])
		}
		x := c.Center().X - width/2
		for _, i := range line {
			c.StrokeLine2(plotLineStyle(i), x, y, x+thumb, y)
			c.FillText(sty, vg.Point{X: x + thumb + gap, Y: y}, f.systems[i])
			x += legendEntryWidth(sty, f.systems[i]) + spacing
		}
		y -= plotLegendLine
	}
}

// plotPNG is img as a paletted image, for a PNG a third the size of an RGB
// one. The figure is drawn in few inks (black, and the line colours) on
// white, so the palette is each ink's shades toward white: anti-aliased
// edges keep their look, and a pixel where two lines cross takes the
// nearest shade.
func plotPNG(img image.Image) *image.Paletted {
	pal := color.Palette{color.White}
	inks := append([]color.Color{color.Black}, plotColors...)
	for i, ink := range inks {
		shades := plotShadesColor
		if i == 0 {
			shades = plotShadesBlack
		}
		r, g, b, _ := ink.RGBA() // opaque
		for k := 1; k <= shades; k++ {
			f := float64(k) / float64(shades)
			mix := func(v uint32) uint8 { return uint8(math.Round(float64(v>>8)*f + 0xff*(1-f))) }
			pal = append(pal, color.RGBA{R: mix(r), G: mix(g), B: mix(b), A: 0xff})
		}
	}
	bounds := img.Bounds()
	out := image.NewPaletted(bounds, pal)
	index := make(map[color.Color]uint8) // the few colours a figure has, each looked up once
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			c := img.At(x, y)
			i, ok := index[c]
			if !ok {
				i = uint8(pal.Index(c))
				index[c] = i
			}
			out.SetColorIndex(x, y, i)
		}
	}
	return out
}

// writePlotFile writes one of the figure's files.
func writePlotFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plots: %w", err)
	}
	bw := bufio.NewWriter(f)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("plots: writing %s: %w", path, err)
	}
	return nil
}
