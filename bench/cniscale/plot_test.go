package cniscale

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeSharePlot writes shunt's share of ADD and DEL per engine, with the
// floor and the standalone eBPF install beside them, as a table (median,
// p10, p90 in ms) and, where gnuplot is installed, a bar chart.
func writeSharePlot(t *testing.T, dir string, s series, shares []share, floor time.Duration) {
	t.Helper()
	var b strings.Builder
	b.WriteString("# name\tmedian_ms\tp10_ms\tp90_ms\n")
	fmt.Fprintf(&b, "%q\t%.2f\t%.2f\t%.2f\n", floorName, ms(floor), ms(quantile(s[floorName], 0.1)), ms(quantile(s[floorName], 0.9)))
	fmt.Fprintf(&b, "%q\t%.2f\t%.2f\t%.2f\n", "2x floor (target)", 2*ms(floor), 2*ms(floor), 2*ms(floor))
	for _, sh := range shares {
		fmt.Fprintf(&b, "%q\t%.2f\t%.2f\t%.2f\n", "shunt's share of "+sh.name, ms(sh.median), ms(sh.p10), ms(sh.p90))
	}
	if v, ok := s[standalone]; ok {
		fmt.Fprintf(&b, "%q\t%.2f\t%.2f\t%.2f\n", "standalone eBPF install", ms(median(v)), ms(quantile(v, 0.1)), ms(quantile(v, 0.9)))
	}
	plot(t, dir, "cniscale-share", b.String(), `set title "shunt's share of a CNI chain's ADD/DEL (with minus without, median; paired p10-p90 bars) vs the restore floor"
set ylabel "ms"
set style fill solid 0.6 border -1
set boxwidth 0.6
set grid ytics
set xtics rotate by -25
set yrange [0:*]
unset key
plot DATA using 0:2:xtic(1) with boxes lc rgb "#4a7ab5", '' using 0:2:3:4 with yerrorbars lc rgb "black" pt 0
`)
}

// writeScalePlot writes ADD latency per pod index, for each chain the raw
// figure and its running median over 11 pods, and plots both.
func writeScalePlot(t *testing.T, dir string, names []string, lats [][]time.Duration) {
	t.Helper()
	var b strings.Builder
	b.WriteString("# index")
	for _, n := range names {
		fmt.Fprintf(&b, "\t%q\t%q", n, n+" (running median of 11)")
	}
	b.WriteString("\n")
	for i := range lats[0] {
		fmt.Fprintf(&b, "%d", i+1)
		for _, l := range lats {
			if i >= len(l) {
				b.WriteString("\tNaN\tNaN")
				continue
			}
			lo, hi := max(0, i-5), min(len(l), i+6)
			fmt.Fprintf(&b, "\t%.2f\t%.2f", ms(l[i]), ms(median(l[lo:hi])))
		}
		b.WriteString("\n")
	}
	var plots []string
	colours := []string{"#4a7ab5", "#9ab8dc", "#c0504d", "#e3a3a1"}
	for i, n := range names {
		c := colours[i%len(colours)]
		plots = append(plots,
			fmt.Sprintf("DATA using 1:%d with points pt 7 ps 0.4 lc rgb %q notitle", 2*i+2, c),
			fmt.Sprintf("DATA using 1:%d with lines lw 2 lc rgb %q title %q", 2*i+3, c, n+" (running median of 11)"))
	}
	plot(t, dir, "cniscale-node", b.String(), fmt.Sprintf(`set title "CNI ADD latency per pod: %d pods added one after another to one node and kept; one node per chain"
set xlabel "pod index"
set ylabel "ms, whole chain (cnitool: bridge + host-local [+ shunt-cni])"
set grid
set yrange [0:*]
set key top left
plot %s
`, len(lats[0]), strings.Join(plots, ", ")))
}

// plot writes data to DIR/NAME.tsv and, with gnuplot, DIR/NAME.png from
// script, where DATA stands for the table's file.
func plot(t *testing.T, dir, name, data, script string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tsv := filepath.Join(dir, name+".tsv")
	if err := os.WriteFile(tsv, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("gnuplot"); err != nil {
		t.Logf("gnuplot not installed: %s written, no plot", tsv)
		return
	}
	png := filepath.Join(dir, name+".png")
	full := fmt.Sprintf("set terminal pngcairo size 1100,520 noenhanced font \",10\"\nset output %q\nDATA = %q\n", png, tsv) + script
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(full)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Logf("gnuplot: %v\n%s", err, out)
		return
	}
	t.Logf("plot: %s", png)
}
