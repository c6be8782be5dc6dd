package dnsproxy

import "time"

// admission decides, for one UDP socket reader, how many queries per
// window may start on the slow path. Table and cache answers are made by
// the reader itself; everything else costs a goroutine, an upstream socket
// and far more CPU. When the reader falls behind (most of its reads return
// a full batch: the socket has a backlog), the slow path is what takes the
// CPU it needs, so admissions are cut to half of what was admitted in that
// window; while it keeps up they grow again by a quarter per window, until
// unlimited. Queries over the limit are dropped (the client retries):
// dropping at the reader costs next to nothing, while a backlog in the
// socket would drop table queries along with the flood.
//
// Under a limit, clients that hold no forwarding slot yet (a stub resolver
// asking now and then, not the flood) have a budget of their own, as large
// again: a flooding client cannot use up the whole window.
type admission struct {
	limit      int // admissions per window; < 0: unlimited
	used       int
	light      int // of used: admitted from the light clients' budget
	batches    int
	full       int
	windowEnds time.Time
}

const (
	admissionWindow = 10 * time.Millisecond
	// admissionFloor keeps forwarding going under any load: 500 q/s a
	// socket.
	admissionFloor = 5
	// admissionCeiling is where the limit is lifted: 10,000 a window, a
	// million a second.
	admissionCeiling = 10000
)

func newAdmission() admission { return admission{limit: -1} }

// batch records one read of n datagrams (full: the read filled its batch).
func (a *admission) batch(now time.Time, full bool) {
	if now.After(a.windowEnds) {
		switch {
		case a.batches > 0 && a.full*2 > a.batches && a.used > 0:
			a.limit = max(admissionFloor, a.used/2)
		case a.limit >= 0:
			a.limit += a.limit/4 + 1
			if a.limit > admissionCeiling {
				a.limit = -1
			}
		}
		a.used, a.light, a.batches, a.full = 0, 0, 0, 0
		a.windowEnds = now.Add(admissionWindow)
	}
	a.batches++
	if full {
		a.full++
	}
}

// allow reports whether one more query may start on the slow path; light:
// its client holds no forwarding slot.
func (a *admission) allow(light bool) bool {
	switch {
	case a.limit < 0 || a.used-a.light < a.limit:
	case light && a.light < a.limit:
		a.light++
	default:
		return false
	}
	a.used++
	return true
}
