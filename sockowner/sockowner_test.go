package sockowner

import (
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestExplainNamesTheHolder(t *testing.T) {
	for _, proto := range []string{"tcp", "udp"} {
		t.Run(proto, func(t *testing.T) {
			var addr string
			if proto == "tcp" {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				addr = ln.Addr().String()
				_, err = net.Listen("tcp", addr)
				checkExplained(t, err, addr)
			} else {
				pc, err := net.ListenPacket("udp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close()
				addr = pc.LocalAddr().String()
				_, err = net.ListenPacket("udp", addr)
				checkExplained(t, err, addr)
			}
		})
	}
}

func checkExplained(t *testing.T, err error, addr string) {
	t.Helper()
	err = Explain(err)
	var iu *InUseError
	if !errors.As(err, &iu) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Explain(%v): not an in-use error", err)
	}
	if len(iu.Holders) != 1 || iu.Holders[0].PID != os.Getpid() || iu.Holders[0].UID != os.Getuid() || iu.Holders[0].Local != addr {
		t.Fatalf("holders = %+v, want this process (pid %d, uid %d) on %s", iu.Holders, os.Getpid(), os.Getuid(), addr)
	}
	if !strings.Contains(err.Error(), "held by pid ") {
		t.Errorf("message does not name the pid: %v", err)
	}
}

func TestExplainLeavesOtherErrors(t *testing.T) {
	e := errors.New("boom")
	if Explain(e) != e || Explain(nil) != nil {
		t.Error("Explain changed an error that is not EADDRINUSE")
	}
}
