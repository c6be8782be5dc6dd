package xdsclient

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// BackoffConfig is the reconnect schedule: the n-th consecutive failure
// waits a random time in [c/2, c) with c = min(Max, Initial*Multiplier^n)
// ("equal jitter"). The jitter keeps many agents that lost the same server
// from returning to it in step; the lower half bounds how often a dead
// server is tried (at most once a second with the defaults), and the low
// ceiling means a returning server is used within Max (2 s by default):
// each attempt is one TCP connection, cheap for the server, while every
// second without it is a second of stale configuration.
type BackoffConfig struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64
}

// Backoff defaults.
const (
	DefaultBackoffInitial    = 250 * time.Millisecond
	DefaultBackoffMax        = 2 * time.Second
	DefaultBackoffMultiplier = 2.0
)

func (b BackoffConfig) withDefaults() (BackoffConfig, error) {
	if b.Initial < 0 {
		return b, fmt.Errorf("Backoff.Initial %v is negative", b.Initial)
	}
	if b.Max < 0 {
		return b, fmt.Errorf("Backoff.Max %v is negative", b.Max)
	}
	if b.Multiplier != 0 && b.Multiplier < 1 {
		return b, fmt.Errorf("Backoff.Multiplier %v is below 1", b.Multiplier)
	}
	if b.Initial == 0 {
		b.Initial = DefaultBackoffInitial
	}
	if b.Max == 0 {
		b.Max = DefaultBackoffMax
	}
	if b.Max < b.Initial {
		return b, fmt.Errorf("Backoff.Max %v is below Backoff.Initial %v", b.Max, b.Initial)
	}
	if b.Multiplier == 0 {
		b.Multiplier = DefaultBackoffMultiplier
	}
	return b, nil
}

// ceiling is the upper bound of the wait after attempt failures in a row
// (attempt >= 0).
func (b BackoffConfig) ceiling(attempt int) time.Duration {
	d := float64(b.Initial)
	for i := 0; i < attempt && d < float64(b.Max); i++ {
		d *= b.Multiplier
	}
	if d > float64(b.Max) {
		d = float64(b.Max)
	}
	return time.Duration(d)
}

// delay is the jittered wait after attempt failures in a row.
func (b BackoffConfig) delay(attempt int) time.Duration {
	c := b.ceiling(attempt)
	if c <= 1 {
		return c
	}
	return c/2 + rand.N(c-c/2)
}

// Delay is the jittered wait after attempt failures in a row, with the
// defaults filled in for zero fields (an invalid config gets the defaults).
func (b BackoffConfig) Delay(attempt int) time.Duration {
	d, err := b.withDefaults()
	if err != nil {
		d, _ = BackoffConfig{}.withDefaults()
	}
	return d.delay(attempt)
}
