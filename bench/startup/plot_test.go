package startup

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// writePlots writes the figures as a table (one line per configuration:
// median, p10, p90 in ms) and, where gnuplot is installed, a bar chart of
// the medians with p10-p90 bars.
func writePlots(t *testing.T, dir string, s series, names []string, floor string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("# name\tmedian_ms\tp10_ms\tp90_ms\n")
	ordered := append([]string{floor}, names...)
	seen := map[string]bool{}
	for _, n := range ordered {
		if seen[n] {
			continue
		}
		seen[n] = true
		fmt.Fprintf(&b, "%q\t%.2f\t%.2f\t%.2f\n", n, ms(median(s[n])), ms(quantile(s[n], 0.1)), ms(quantile(s[n], 0.9)))
	}
	data := filepath.Join(dir, "startup.tsv")
	if err := os.WriteFile(data, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("gnuplot"); err != nil {
		t.Logf("gnuplot not installed: %s written, no plot", data)
		return
	}
	png := filepath.Join(dir, "startup-install.png")
	script := fmt.Sprintf(`set terminal pngcairo size 1100,520 noenhanced font ",10"
set output %q
set title "Whole-process start-up in a fresh namespace (median, p10-p90 bars; lower is better)"
set ylabel "ms"
set style fill solid 0.6 border -1
set boxwidth 0.6
set grid ytics
set xtics rotate by -25
set yrange [0:*]
unset key
plot %q using 0:2:xtic(1) with boxes lc rgb "#4a7ab5", '' using 0:2:3:4 with yerrorbars lc rgb "black" pt 0
`, png, data)
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Logf("gnuplot: %v\n%s", err, out)
		return
	}
	t.Logf("plot: %s", png)
}
