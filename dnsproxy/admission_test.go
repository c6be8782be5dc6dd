package dnsproxy

import (
	"testing"
	"time"
)

// TestAdmissionShedsWhenBehind: a reader that keeps finding a backlog
// admits ever fewer queries to the slow path (down to the floor), and one
// that keeps up lifts the limit again.
func TestAdmissionShedsWhenBehind(t *testing.T) {
	a := newAdmission()
	now := time.Unix(0, 0)
	window := func(full bool, tries int) int {
		now = now.Add(admissionWindow + time.Millisecond)
		a.batch(now, full)
		n := 0
		for i := 0; i < tries; i++ {
			if a.allow(false) {
				n++
			}
		}
		return n
	}
	if n := window(true, 1000); n != 1000 {
		t.Fatalf("first window admitted %d of 1000; the limit starts lifted", n)
	}
	prev := 1000
	for i := 0; i < 20; i++ {
		n := window(true, 1000)
		if n > prev || (prev > admissionFloor && n >= prev) {
			t.Fatalf("window %d behind: admitted %d after %d; want fewer", i, n, prev)
		}
		prev = n
	}
	if prev != admissionFloor {
		t.Errorf("after a long backlog %d admitted a window, want the floor %d", prev, admissionFloor)
	}
	for i := 0; i < 60 && a.limit >= 0; i++ {
		window(false, 10)
	}
	if a.limit >= 0 {
		t.Errorf("the limit is still %d after the reader kept up for 60 windows", a.limit)
	}
}

// TestAdmissionLightClients: under a limit, clients holding no slot have a
// budget of their own that the heavy ones cannot use up.
func TestAdmissionLightClients(t *testing.T) {
	a := newAdmission()
	now := time.Unix(0, 0)
	for i := 0; i < 30; i++ { // behind for long: down to the floor
		now = now.Add(admissionWindow + time.Millisecond)
		a.batch(now, true)
		for j := 0; j < 1000 && a.allow(false); j++ {
		}
	}
	now = now.Add(admissionWindow + time.Millisecond)
	a.batch(now, true)
	heavy := 0
	for j := 0; j < 1000 && a.allow(false); j++ {
		heavy++
	}
	light := 0
	for j := 0; j < 1000 && a.allow(true); j++ {
		light++
	}
	if heavy != admissionFloor || light != admissionFloor {
		t.Errorf("at the floor a window admitted %d from heavy clients and then %d light ones; want %d and %d", heavy, light, admissionFloor, admissionFloor)
	}
}
