package redirect

import (
	"fmt"
	"net/netip"
	"testing"
)

// TestPlanEqualIsMarshalledEquality holds Equal, which compares the
// address lists directly, to its meaning: two plans are equal when they
// marshal the same.
func TestPlanEqualIsMarshalledEquality(t *testing.T) {
	base := func() *Plan {
		p, err := NewConfig().Plan(testHost())
		if err != nil {
			t.Fatal(err)
		}
		p.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("fd09::/64")}
		p.MeshCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}
		p.Egress = &Egress{
			Allowed:   []netip.Prefix{netip.MustParsePrefix("240.0.0.0/4")},
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.7:10002")},
		}
		return p
	}
	p1 := netip.MustParsePrefix("192.0.2.0/24")
	cases := []struct {
		name   string
		change func(*Plan)
	}{
		{"same", func(*Plan) {}},
		{"a port", func(p *Plan) { p.OutboundPort++ }},
		{"an excluded outbound prefix added", func(p *Plan) { p.ExcludeOutboundCIDRs = append(p.ExcludeOutboundCIDRs, p1) }},
		{"excluded outbound prefixes reordered", func(p *Plan) {
			l := p.ExcludeOutboundCIDRs
			l[0], l[1] = l[1], l[0]
		}},
		{"an excluded inbound prefix", func(p *Plan) { p.ExcludeInboundCIDRs = []netip.Prefix{p1} }},
		{"no mesh prefixes", func(p *Plan) { p.MeshCIDRs = nil }},
		{"empty, not nil, mesh prefixes", func(p *Plan) { p.MeshCIDRs = p.MeshCIDRs[:0] }},
		{"an included outbound prefix", func(p *Plan) { p.IncludeOutboundCIDRs = []netip.Prefix{p1} }},
		{"a prefix's length", func(p *Plan) { p.MeshCIDRs[0] = netip.MustParsePrefix("10.96.0.0/13") }},
		{"no lockdown", func(p *Plan) { p.Egress = nil }},
		{"an allowed prefix more", func(p *Plan) { p.Egress.Allowed = append(p.Egress.Allowed, p1) }},
		{"another endpoint port", func(p *Plan) { p.Egress.Endpoints[0] = netip.MustParseAddrPort("192.0.2.7:10003") }},
		{"no endpoints", func(p *Plan) { p.Egress.Endpoints = nil }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, q := base(), base()
			c.change(q)
			want := mustJSON(p) == mustJSON(q)
			if got := p.Equal(q); got != want {
				t.Errorf("Equal = %v, marshalled equality %v", got, want)
			}
			if got := q.Equal(p); got != want {
				t.Errorf("Equal reversed = %v, marshalled equality %v", got, want)
			}
			// Equal leaves both plans as they were.
			if a, b := mustJSON(base()), mustJSON(p); a != b {
				t.Errorf("Equal changed its receiver:\n%s\n%s", a, b)
			}
		})
	}
	if (*Plan)(nil).Equal(base()) || !(*Plan)(nil).Equal(nil) {
		t.Error("a nil plan equals only a nil plan")
	}
}

// BenchmarkPlanEqual compares two plans of 10,000 excluded prefixes, as an
// agent's change does.
func BenchmarkPlanEqual(b *testing.B) {
	p, err := NewConfig().Plan(testHost())
	if err != nil {
		b.Fatal(err)
	}
	for i := range 10000 {
		p.ExcludeOutboundCIDRs = append(p.ExcludeOutboundCIDRs, netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)))
	}
	q := p.Clone()
	for b.Loop() {
		if !p.Equal(q) {
			b.Fatal("a plan differs from its clone")
		}
	}
}
