package xdsproxy

import (
	"sync"
	"time"
)

// rateLimit lets one log line through per interval and counts the others,
// so that a client opening stream after stream cannot flood the log.
type rateLimit struct {
	every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether a line may be written now and how many were held
// back since the last one.
func (r *rateLimit) allow() (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.last) < r.every {
		r.suppressed++
		return false, 0
	}
	n := r.suppressed
	r.last, r.suppressed = time.Now(), 0
	return true, n
}
