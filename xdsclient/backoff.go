package xdsclient

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// BackoffConfig is the reconnect schedule: the n-th consecutive failure
// waits a random time in [0, min(Max, Initial*Multiplier^n)) ("full
// jitter"), so that many agents losing the same server do not return to it
// in step.
type BackoffConfig struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64
}

// Backoff defaults.
const (
	DefaultBackoffInitial    = 250 * time.Millisecond
	DefaultBackoffMax        = 30 * time.Second
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

// delay is the full-jitter wait after attempt failures in a row.
func (b BackoffConfig) delay(attempt int) time.Duration {
	c := b.ceiling(attempt)
	if c <= 0 {
		return 0
	}
	return rand.N(c)
}
