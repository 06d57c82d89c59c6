package wrkbench

import (
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// chartColors gives each path the same colour in every group.
var chartColors = []color.Color{
	color.RGBA{R: 120, G: 120, B: 120, A: 255}, // direct
	color.RGBA{R: 31, G: 119, B: 180, A: 255},  // podnic TCX
	color.RGBA{R: 148, G: 103, B: 189, A: 255}, // podnic TCX, socket path
	color.RGBA{R: 99, G: 170, B: 230, A: 255},  // podnic legacy
	color.RGBA{R: 44, G: 160, B: 44, A: 255},   // podnic TCX, tc only
	color.RGBA{R: 180, G: 180, B: 180, A: 255}, // direct via node
	color.RGBA{R: 214, G: 39, B: 40, A: 255},   // kube-proxy nftables
	color.RGBA{R: 255, G: 127, B: 14, A: 255},  // kube-proxy iptables-legacy
}

// WritePNG draws req/s of every path relative to direct (the median of
// same-round ratios), one group of bars per number of Services and
// connection kind, and saves it as a PNG.
func (r *Results) WritePNG(path string) error {
	p := plot.New()
	p.Title.Text = "HTTP req/s relative to the direct pod IP (median of same-round ratios)"
	p.Y.Label.Text = "× direct"
	p.Legend.Top = true

	var groups []string
	type key struct {
		phase int
		short bool
	}
	var conds []key
	for i, ph := range r.Phases {
		for _, short := range []bool{false, true} {
			kind := "keep-alive"
			if short {
				kind = "Connection: close"
			}
			groups = append(groups, fmt.Sprintf("%d Svc, %s", ph.Services, kind))
			conds = append(conds, key{i, short})
		}
	}
	if len(r.Phases) == 0 {
		return fmt.Errorf("drawing chart: no results")
	}
	names := []string{}
	for _, c := range r.Phases[0].Cases {
		if !c.Short {
			names = append(names, c.Target.Name)
		}
	}
	width := vg.Points(float64(60) / float64(len(names)+1))
	ratio := func(a, b Sample) float64 { return a.RPS() / b.RPS() }
	for i, name := range names {
		vals := make(plotter.Values, len(conds))
		for j, k := range conds {
			ph := r.Phases[k.phase]
			s := ph.Samples[Case{&Target{Name: name}, k.short}.String()]
			direct := ph.Samples[Case{&Target{Name: TargetDirect}, k.short}.String()]
			v := paired(s, direct, ratio)
			if v != v { // NaN: the path did not run in this phase
				v = 0
			}
			vals[j] = v
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return fmt.Errorf("drawing chart: %w", err)
		}
		bars.LineStyle.Width = 0
		bars.Color = chartColors[i%len(chartColors)]
		bars.Offset = vg.Points(float64(i-len(names)/2)) * width
		p.Add(bars)
		p.Legend.Add(name, bars)
	}
	p.NominalX(groups...)
	if err := p.Save(11*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("saving chart %s: %w", path, err)
	}
	return nil
}
