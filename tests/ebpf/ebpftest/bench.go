package ebpftest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// BenchResult is what the bench helper prints, one JSON line.
type BenchResult struct {
	Mode     string        `json:"mode"`
	Count    int64         `json:"count"`
	Duration time.Duration `json:"duration"`
	P50      time.Duration `json:"p50,omitempty"`
	P99      time.Duration `json:"p99,omitempty"`
	PerSec   float64       `json:"perSec,omitempty"`
	MBPerSec float64       `json:"mbPerSec,omitempty"`
	Errors   int64         `json:"errors,omitempty"`
}

// benchClient: rr ADDR CONNS SECONDS | cps ADDR CONNS SECONDS | bulk ADDR MB
func benchClient(args []string) error {
	if len(args) < 3 {
		return fmt.Errorf("bench: want MODE ADDR N [SECONDS]")
	}
	mode, addr := args[0], args[1]
	n, _ := strconv.Atoi(args[2])
	secs := 3.0
	if len(args) > 3 {
		secs, _ = strconv.ParseFloat(args[3], 64)
	}
	dur := time.Duration(secs * float64(time.Second))
	var res BenchResult
	var err error
	switch mode {
	case "rr":
		res, err = benchRR(addr, n, dur)
	case "cps":
		res, err = benchCPS(addr, n, dur)
	case "bulk":
		res, err = benchBulk(addr, n)
	default:
		return fmt.Errorf("bench: unknown mode %q", mode)
	}
	if err != nil {
		return err
	}
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	return nil
}

func benchRR(addr string, conns int, dur time.Duration) (BenchResult, error) {
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	var errs atomic.Int64
	deadline := time.Now().Add(dur)
	msg := make([]byte, 63)
	for i := range msg {
		msg[i] = 'x'
	}
	msg = append(msg, '\n')
	for i := 0; i < conns; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return BenchResult{}, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			r := bufio.NewReader(c)
			local := make([]time.Duration, 0, 100000)
			for time.Now().Before(deadline) {
				t := time.Now()
				if _, err := c.Write(msg); err != nil {
					errs.Add(1)
					return
				}
				if _, err := r.ReadString('\n'); err != nil {
					errs.Add(1)
					return
				}
				local = append(local, time.Since(t))
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	res := BenchResult{Mode: "rr", Count: int64(len(lat)), Duration: dur, Errors: errs.Load()}
	if len(lat) > 0 {
		res.P50 = lat[len(lat)/2]
		res.P99 = lat[len(lat)*99/100]
		res.PerSec = float64(len(lat)) / dur.Seconds()
	}
	return res, nil
}

// benchCPS also reports the percentiles of one connection's life (connect,
// one exchange, close): the per-connection cost, free of the parallelism
// that conn/s includes.
func benchCPS(addr string, workers int, dur time.Duration) (BenchResult, error) {
	var count, errs atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lat []time.Duration
	deadline := time.Now().Add(dur)
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256)
			local := make([]time.Duration, 0, 1<<16)
			defer func() {
				mu.Lock()
				lat = append(lat, local...)
				mu.Unlock()
			}()
			for time.Now().Before(deadline) {
				start := time.Now()
				c, err := net.Dial("tcp", addr)
				if err != nil {
					errs.Add(1)
					continue
				}
				// Linger 0: the client's side closes with RST and leaves no
				// TIME_WAIT behind to exhaust ephemeral ports.
				_ = c.(*net.TCPConn).SetLinger(0)
				if _, err := c.Write([]byte("hi\n")); err != nil {
					errs.Add(1)
				} else if _, err := c.Read(buf); err != nil {
					errs.Add(1)
				} else {
					count.Add(1)
				}
				c.Close()
				local = append(local, time.Since(start))
			}
		}()
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	res := BenchResult{Mode: "cps", Count: count.Load(), Duration: dur, PerSec: float64(count.Load()) / dur.Seconds(), Errors: errs.Load()}
	if len(lat) > 0 {
		res.P50 = lat[len(lat)/2]
		res.P99 = lat[len(lat)*99/100]
	}
	return res, nil
}

func benchBulk(addr string, mb int) (BenchResult, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return BenchResult{}, err
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	total := int64(mb) << 20
	for sent := int64(0); sent < total; sent += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			return BenchResult{}, err
		}
	}
	_ = c.(*net.TCPConn).CloseWrite()
	_, _ = io.Copy(io.Discard, c) // the sink closes once it read everything
	d := time.Since(start)
	return BenchResult{Mode: "bulk", Count: total, Duration: d, MBPerSec: float64(total) / (1 << 20) / d.Seconds()}, nil
}
