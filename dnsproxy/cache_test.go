package dnsproxy

import (
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func answer(name string, ttl uint32) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Response = true
	rr, _ := dns.NewRR(fmt.Sprintf("%s %d IN A 192.0.2.1", name, ttl))
	m.Answer = append(m.Answer, rr)
	return m
}

func TestCacheBoundsAndTTLs(t *testing.T) {
	c := newCache(CacheOptions{Size: 64, MaxTTL: time.Minute, MinTTL: 5 * time.Second})
	now := time.Now()
	for i := 0; i < 1000; i++ {
		name := fmt.Sprintf("n%d.example.", i)
		k, _ := keyFor(name, dns.TypeA, dns.ClassINET, false, false)
		c.put(k, answer(name, 300), wireAnswers{}, now)
	}
	if n := c.len(); n > 64+cacheShards {
		t.Errorf("cache holds %d entries, bound is 64", n)
	}
	k, _ := keyFor("A.example.", dns.TypeA, dns.ClassINET, false, false)
	c.put(k, answer("a.example.", 3600), wireAnswers{}, now)
	if m, _ := c.get(k, now.Add(59*time.Second), false); m == nil || m.Answer[0].Header().Ttl != 3600-59 {
		t.Errorf("aged entry: %v", m)
	}
	if m, _ := c.get(k, now.Add(61*time.Second), false); m != nil {
		t.Error("entry outlived MaxTTL")
	}
	c.put(k, answer("a.example.", 1), wireAnswers{}, now)
	if m, _ := c.get(k, now.Add(4*time.Second), false); m == nil {
		t.Error("entry dropped before MinTTL")
	}
	// A TTL of 0 with no MinTTL is not cached.
	c0 := newCache(CacheOptions{Size: 10})
	c0.put(k, answer("a.example.", 0), wireAnswers{}, now)
	if c0.len() != 0 {
		t.Error("TTL 0 answer cached")
	}
}
