package dashboard

import (
	"strings"
	"testing"
	"time"
)

func TestNiceCeil(t *testing.T) {
	for v, want := range map[float64]float64{0: 2, 1: 2, 3: 4, 5: 6, 9: 10, 10: 10, 11: 20, 153: 200, 399: 400, 4100: 6000} {
		if got := niceCeil(v); got != want {
			t.Errorf("niceCeil(%v) = %v, want %v", v, got, want)
		}
	}
}

func TestLineChart(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	if c := backlogChart([]Sample{{At: t0}}); c.Empty == "" {
		t.Error("one sample drew a chart")
	}
	c := backlogChart([]Sample{{At: t0, Pending: 10, Parked: 1}, {At: t0.Add(time.Minute), Pending: 4, Parked: 0}})
	if c.Empty != "" || len(c.Series) != 2 || c.YTicks[2].Label != "10" || c.YTicks[1].Label != "5" {
		t.Fatalf("%+v", c)
	}
	if c.Series[0].Points != "56.0,12.0 704.0,97.2" {
		t.Errorf("points %q", c.Series[0].Points)
	}
	if !strings.Contains(c.Describe, "parked now 0") {
		t.Errorf("describe %q", c.Describe)
	}
}
