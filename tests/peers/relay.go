package peers

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// Relay makes a peer's port reachable at the same address inside pod: each
// connection accepted there is joined, by the test process, to a new
// connection that dial opens inside the peer's namespace, which keeps
// nothing but lo. It stops when the test ends.
func Relay(t testing.TB, pod *testenv.Netns, addr string, dial func(context.Context, string) (net.Conn, error)) {
	t.Helper()
	var ln net.Listener
	if err := pod.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				up, err := dial(ctx, addr)
				cancel()
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
}
