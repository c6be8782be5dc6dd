package iptables

import (
	"context"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestRenderedFormIsWhatIptablesSavePrints holds the renderer to the form
// iptables-save prints, on both backends and for every scenario: install
// records the rendered rules as the reference for drift detection, so any
// difference would show as drift right after install.
func TestRenderedFormIsWhatIptablesSavePrints(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		for name, p := range scenarios(t) {
			t.Run(backend+"/"+name, func(t *testing.T) {
				testenv.RequireBinary(t, "iptables-"+backend+"-restore")
				n := testenv.NewNetns(t, "ipt")
				eng := New(Options{NetnsPath: n.Path(), StateDir: t.TempDir(), Backend: backend})
				ctx := context.Background()
				if err := eng.Install(ctx, p); err != nil {
					t.Fatalf("install: %v", err)
				}
				t.Cleanup(func() { _ = eng.Uninstall(ctx) })
				st, err := eng.Status(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if !st.Installed || len(st.Drift) > 0 {
					t.Errorf("status right after install: installed=%v drift:\n%v", st.Installed, st.Drift)
				}
				if err := eng.Uninstall(ctx); err != nil {
					t.Fatalf("uninstall: %v", err)
				}
				st, err = eng.Status(ctx)
				if err != nil || st.Installed || len(st.Drift) > 0 {
					t.Errorf("status after uninstall: %+v, %v", st, err)
				}
			})
		}
	}
}
