package kubeapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// This is the HTTP/1.1 the plugin speaks to the API server: GET requests
// with a Content-Length, chunked or close-delimited answer, over one
// connection kept for the pod's and the namespace's request. net/http would
// do the same, but it and what it links (HTTP/2, MIME, IDNA tables) cost
// every pod start a share of the plugin's start-up in package
// initialisation and binary size, for two GETs (docs/performance.md,
// "Start-up").

const (
	// requestTimeout bounds each request, dial and TLS handshake included.
	requestTimeout = 10 * time.Second
	maxBody        = 8 << 20
	maxHeader      = 1 << 20
)

// response is what get needs of an HTTP response.
type response struct {
	code   int
	status string // "404 Not Found"
	body   []byte
}

// session is the connection a series of requests share; the zero value
// dials on first use.
type session struct {
	c      *Client
	conn   net.Conn
	br     *bufio.Reader
	reused bool // conn has served a request: the server may have closed it since
}

func (s *session) close() {
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}

// get sends GET requestURI. A kept connection the server closed meanwhile
// is replaced once, as net/http does for idempotent requests.
func (s *session) get(ctx context.Context, requestURI string) (*response, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		if s.conn == nil {
			if err := s.dial(ctx); err != nil {
				return nil, err
			}
		}
		reused := s.reused
		resp, started, err := s.roundTrip(ctx, requestURI)
		if err != nil && reused && !started && attempt == 0 && ctx.Err() == nil {
			s.close()
			continue
		}
		if err != nil {
			s.close()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w: %v", ctx.Err(), err)
			}
			return nil, err
		}
		return resp, nil
	}
}

func (s *session) dial(ctx context.Context) error {
	u := s.c.server
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	addr := net.JoinHostPort(u.Hostname(), port)
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	if u.Scheme == "https" {
		cfg := s.c.tls
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName = u.Hostname()
		}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return fmt.Errorf("tls handshake with %s: %w", addr, err)
		}
		conn = tc
	}
	s.conn, s.br, s.reused = conn, bufio.NewReader(conn), false
	return nil
}

// roundTrip writes one request and reads its response; started says
// whether any of the response arrived (after which it is not retried).
func (s *session) roundTrip(ctx context.Context, requestURI string) (resp *response, started bool, err error) {
	// The context's end (its deadline is the request's) interrupts blocked
	// reads and writes; by then ctx.Err says why.
	conn := s.conn
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var req bytes.Buffer
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: shunt-cni\r\nAccept: application/json\r\n", requestURI, s.c.server.Host)
	if s.c.authorization != "" {
		fmt.Fprintf(&req, "Authorization: %s\r\n", s.c.authorization)
	}
	req.WriteString("\r\n")
	if _, err := s.conn.Write(req.Bytes()); err != nil {
		return nil, false, fmt.Errorf("send request: %w", err)
	}
	if _, err := s.br.Peek(1); err != nil {
		return nil, false, fmt.Errorf("read response: %w", err)
	}
	resp, keep, err := readResponse(s.br)
	if err != nil {
		return nil, true, fmt.Errorf("read response: %w", err)
	}
	s.reused = true
	if !keep {
		s.close()
	}
	return resp, true, nil
}

// readResponse reads one response to a GET; keep says whether the
// connection can carry another request.
func readResponse(br *bufio.Reader) (resp *response, keep bool, err error) {
	h := &headerReader{br: br, left: maxHeader}
	for {
		line, err := h.line()
		if err != nil {
			return nil, false, err
		}
		proto, status, _ := strings.Cut(line, " ")
		code, cerr := strconv.Atoi(strings.SplitN(status, " ", 2)[0])
		if !strings.HasPrefix(proto, "HTTP/1.") || cerr != nil || code < 100 || code > 999 {
			return nil, false, fmt.Errorf("not an HTTP/1 status line: %q", line)
		}
		var length int64 = -1
		chunked, closing := false, proto == "HTTP/1.0"
		for {
			line, err := h.line()
			if err != nil {
				return nil, false, err
			}
			if line == "" {
				break
			}
			name, value, ok := strings.Cut(line, ":")
			if !ok {
				return nil, false, fmt.Errorf("malformed header line %q", line)
			}
			value = strings.TrimSpace(value)
			switch strings.ToLower(name) {
			case "content-length":
				n, err := strconv.ParseInt(value, 10, 64)
				if err != nil || n < 0 || length >= 0 && n != length {
					return nil, false, fmt.Errorf("bad Content-Length %q", value)
				}
				length = n
			case "transfer-encoding":
				if !strings.EqualFold(value, "chunked") {
					return nil, false, fmt.Errorf("unsupported Transfer-Encoding %q", value)
				}
				chunked = true
			case "connection":
				for _, t := range strings.Split(value, ",") {
					if strings.EqualFold(strings.TrimSpace(t), "close") {
						closing = true
					}
				}
			}
		}
		if code >= 100 && code < 200 && code != 101 {
			continue // an interim response: the real one follows
		}
		resp = &response{code: code, status: strings.TrimSpace(status)}
		switch {
		case code == 101:
			return nil, false, errors.New("the server switched protocols")
		case code == 204 || code == 304:
		case chunked:
			resp.body, err = readChunked(br, h)
		case length >= 0:
			if length > maxBody {
				return nil, false, fmt.Errorf("response of %d bytes: larger than %d", length, maxBody)
			}
			resp.body = make([]byte, length)
			_, err = io.ReadFull(br, resp.body)
		default:
			// Delimited by the end of the connection.
			closing = true
			resp.body, err = io.ReadAll(io.LimitReader(br, maxBody+1))
			if err == nil && len(resp.body) > maxBody {
				err = fmt.Errorf("response larger than %d bytes", maxBody)
			}
		}
		if err != nil {
			return nil, false, err
		}
		return resp, !closing, nil
	}
}

func readChunked(br *bufio.Reader, h *headerReader) ([]byte, error) {
	var body []byte
	for {
		line, err := h.line()
		if err != nil {
			return nil, err
		}
		size, _, _ := strings.Cut(line, ";")
		n, err := strconv.ParseUint(strings.TrimSpace(size), 16, 31)
		if err != nil {
			return nil, fmt.Errorf("bad chunk size %q", line)
		}
		if n == 0 {
			// Trailers, up to the empty line.
			for {
				line, err := h.line()
				if err != nil {
					return nil, err
				}
				if line == "" {
					return body, nil
				}
			}
		}
		if len(body)+int(n) > maxBody {
			return nil, fmt.Errorf("response larger than %d bytes", maxBody)
		}
		start := len(body)
		body = append(body, make([]byte, n)...)
		if _, err := io.ReadFull(br, body[start:]); err != nil {
			return nil, err
		}
		if line, err := h.line(); err != nil || line != "" {
			return nil, fmt.Errorf("chunk not followed by CRLF")
		}
	}
}

// headerReader reads CRLF- (or LF-) terminated lines, at most left bytes
// of them in all.
type headerReader struct {
	br   *bufio.Reader
	left int
}

func (h *headerReader) line() (string, error) {
	var line []byte
	for {
		b, err := h.br.ReadSlice('\n')
		h.left -= len(b)
		if h.left < 0 {
			return "", errors.New("response header too large")
		}
		line = append(line, b...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return "", err
		}
		return strings.TrimRight(string(line), "\r\n"), nil
	}
}
