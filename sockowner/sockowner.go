// Package sockowner finds which processes hold a local port, from
// /proc/net/{tcp,tcp6,udp,udp6} (the socket's inode and owner UID in the
// reader's network namespace) and /proc/*/fd (the processes holding that
// inode), so that "address already in use" can name the holder.
package sockowner

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Holder is a socket bound to a port and, when visible, the process
// holding it.
type Holder struct {
	Proto string // "tcp" or "udp"
	Local string // address as the kernel lists it, e.g. 127.0.0.1:15053
	UID   int
	Inode uint64
	// PID is 0 when no visible process holds the socket (another PID
	// namespace, or it is being closed).
	PID  int
	Comm string
}

func (h Holder) String() string {
	who := "no visible process"
	if h.PID != 0 {
		who = fmt.Sprintf("pid %d (%s)", h.PID, h.Comm)
	}
	return fmt.Sprintf("%s, uid %d, %s %s", who, h.UID, h.Proto, h.Local)
}

// Proc is where /proc is mounted; tests point it elsewhere.
type Proc string

// Find lists the sockets of proto ("tcp": listening, "udp": bound) on port
// in the current network namespace, with their holders.
func (p Proc) Find(proto string, port uint16) ([]Holder, error) {
	var files []string
	switch proto {
	case "tcp", "tcp4", "tcp6":
		files = []string{"net/tcp", "net/tcp6"}
		proto = "tcp"
	case "udp", "udp4", "udp6":
		files = []string{"net/udp", "net/udp6"}
		proto = "udp"
	default:
		return nil, fmt.Errorf("find socket holders: unknown protocol %q", proto)
	}
	var out []Holder
	for _, f := range files {
		hs, err := p.parse(filepath.Join(string(p), f), proto, port)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		out = append(out, hs...)
	}
	if len(out) == 0 {
		return nil, nil
	}
	byInode := map[uint64][]int{}
	for i := range out {
		byInode[out[i].Inode] = append(byInode[out[i].Inode], i)
	}
	p.matchProcesses(byInode, out)
	return out, nil
}

// parse reads one /proc/net table: "sl local rem st ... uid timeout inode".
func (p Proc) parse(path, proto string, port uint16) ([]Holder, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Holder
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 10 {
			continue
		}
		addr, portHex, ok := strings.Cut(fl[1], ":")
		if !ok {
			continue
		}
		pn, err := strconv.ParseUint(portHex, 16, 16)
		if err != nil || uint16(pn) != port {
			continue
		}
		// TCP: listeners only (0A); UDP: unconnected sockets (07).
		if (proto == "tcp" && fl[3] != "0A") || (proto == "udp" && fl[3] != "07") {
			continue
		}
		uid, _ := strconv.Atoi(fl[7])
		inode, _ := strconv.ParseUint(fl[9], 10, 64)
		out = append(out, Holder{Proto: proto, Local: net.JoinHostPort(kernelAddr(addr), strconv.Itoa(int(pn))), UID: uid, Inode: inode})
	}
	return out, sc.Err()
}

// kernelAddr decodes the hex address of /proc/net/*: 32-bit words in host
// (little-endian here) order.
func kernelAddr(h string) string {
	if len(h) != 8 && len(h) != 32 {
		return h
	}
	b := make([]byte, len(h)/2)
	for i := 0; i < len(h)/8; i++ {
		w, err := strconv.ParseUint(h[i*8:i*8+8], 16, 32)
		if err != nil {
			return h
		}
		b[i*4], b[i*4+1], b[i*4+2], b[i*4+3] = byte(w), byte(w>>8), byte(w>>16), byte(w>>24)
	}
	return net.IP(b).String()
}

func (p Proc) matchProcesses(byInode map[uint64][]int, out []Holder) {
	pids, err := os.ReadDir(string(p))
	if err != nil {
		return
	}
	for _, d := range pids {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		fdDir := filepath.Join(string(p), d.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil || !strings.HasPrefix(link, "socket:[") {
				continue
			}
			inode, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]"), 10, 64)
			if err != nil {
				continue
			}
			for _, i := range byInode[inode] {
				if out[i].PID == 0 {
					out[i].PID = pid
					comm, _ := os.ReadFile(filepath.Join(string(p), d.Name(), "comm"))
					out[i].Comm = strings.TrimSpace(string(comm))
				}
			}
		}
	}
}

// InUseError is a bind that failed because another socket holds the port.
type InUseError struct {
	Err     error
	Holders []Holder
}

func (e *InUseError) Error() string {
	if len(e.Holders) == 0 {
		return e.Err.Error() + " (holder not found)"
	}
	hs := make([]string, len(e.Holders))
	for i, h := range e.Holders {
		hs[i] = h.String()
	}
	return e.Err.Error() + ": held by " + strings.Join(hs, "; ")
}

func (e *InUseError) Unwrap() error { return e.Err }

// Explain returns err with the holders of the port named when err is a
// bind refused with EADDRINUSE (as net.Listen returns it), and err
// unchanged otherwise.
func Explain(err error) error {
	var oe *net.OpError
	if err == nil || !errors.Is(err, syscall.EADDRINUSE) || !errors.As(err, &oe) || oe.Addr == nil {
		return err
	}
	var port int
	switch a := oe.Addr.(type) {
	case *net.TCPAddr:
		port = a.Port
	case *net.UDPAddr:
		port = a.Port
	default:
		return err
	}
	hs, ferr := Proc("/proc").Find(oe.Net, uint16(port))
	if ferr != nil {
		return fmt.Errorf("%w (finding the holder: %v)", err, ferr)
	}
	return &InUseError{Err: err, Holders: hs}
}
