package dashboard

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// chart is an SVG line chart drawn on the server: the template writes it as
// inline <svg> with presentation attributes and CSS classes only (no
// inline styles, no script), so the CSP needs nothing special.
type chart struct {
	Title    string
	W, H     int
	X0, X1   int // plot area, left and right
	Y0, Y1   int // plot area, top and bottom
	Series   []series
	YTicks   []tick
	XTicks   []tick
	LabelX   int    // right edge of the y-axis labels
	LabelY   int    // baseline of the x-axis labels
	Empty    string // shown instead of a chart when there is nothing to draw
	Describe string // text alternative
}

type series struct {
	Class  string
	Label  string
	Points string
	Last   int64
	LastX  float64
	LastY  float64
}

type tick struct {
	Pos    float64
	Label  string
	Anchor string // text-anchor of the label
}

const (
	chartW      = 720
	chartH      = 180
	chartLeft   = 56
	chartRight  = 16
	chartTop    = 12
	chartBottom = 26
)

// niceCeil rounds v up to 2, 4, 6, 8 or 10 times a power of ten (at least
// 2), so the middle grid line is a whole number too.
func niceCeil(v float64) float64 {
	if v <= 2 {
		return 2
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 4, 6, 8, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// lineChart draws one chart of the given series over the samples' times.
// values returns each series' value of a sample.
func lineChart(title string, samples []Sample, names []string, classes []string, values func(Sample) []int64) chart {
	c := chart{Title: title, W: chartW, H: chartH, X0: chartLeft, X1: chartW - chartRight, Y0: chartTop, Y1: chartH - chartBottom,
		LabelX: chartLeft - 6, LabelY: chartH - 8}
	if len(samples) < 2 {
		c.Empty = "Collecting samples: the chart appears after the second one."
		return c
	}
	t0, t1 := samples[0].At, samples[len(samples)-1].At
	span := t1.Sub(t0)
	if span <= 0 {
		span = time.Second
	}
	var maxV int64
	for _, s := range samples {
		for _, v := range values(s) {
			maxV = max(maxV, v)
		}
	}
	top := niceCeil(float64(maxV))
	xOf := func(t time.Time) float64 {
		return float64(c.X0) + float64(c.X1-c.X0)*float64(t.Sub(t0))/float64(span)
	}
	yOf := func(v int64) float64 {
		return float64(c.Y1) - float64(c.Y1-c.Y0)*float64(v)/top
	}
	pts := make([]strings.Builder, len(names))
	for _, s := range samples {
		x := xOf(s.At)
		for i, v := range values(s) {
			if pts[i].Len() > 0 {
				pts[i].WriteByte(' ')
			}
			fmt.Fprintf(&pts[i], "%.1f,%.1f", x, yOf(v))
		}
	}
	last := values(samples[len(samples)-1])
	var desc []string
	for i, name := range names {
		c.Series = append(c.Series, series{Class: classes[i], Label: name, Points: pts[i].String(), Last: last[i],
			LastX: xOf(t1), LastY: yOf(last[i])})
		desc = append(desc, fmt.Sprintf("%s now %d", name, last[i]))
	}
	for _, f := range []float64{0, 0.5, 1} {
		v := top * f
		label := strconv.FormatFloat(v, 'f', -1, 64)
		if v != math.Trunc(v) {
			label = strconv.FormatFloat(v, 'f', 1, 64)
		}
		c.YTicks = append(c.YTicks, tick{Pos: float64(c.Y1) - float64(c.Y1-c.Y0)*f, Label: label, Anchor: "end"})
	}
	for i, f := range []float64{0, 0.5, 1} {
		t := t0.Add(time.Duration(float64(span) * f))
		c.XTicks = append(c.XTicks, tick{Pos: float64(c.X0) + float64(c.X1-c.X0)*f, Label: t.Local().Format("15:04:05"),
			Anchor: []string{"start", "middle", "end"}[i]})
	}
	c.Describe = fmt.Sprintf("%s from %s to %s: %s.", title, t0.Local().Format("15:04:05"), t1.Local().Format("15:04:05"),
		strings.Join(desc, ", "))
	return c
}

func backlogChart(samples []Sample) chart {
	return lineChart("Backlog", samples, []string{"waiting (pending + blocked)", "parked"}, []string{"s-pending", "s-parked"},
		func(s Sample) []int64 { return []int64{s.Pending, s.Parked} })
}

func rateChart(samples []Sample) chart {
	return lineChart("Published per minute", samples, []string{"published in the last minute"}, []string{"s-rate"},
		func(s Sample) []int64 { return []int64{s.PerMinute} })
}
