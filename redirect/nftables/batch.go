package nftables

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// applyBatch sends as one batch the messages queue adds, over the raw
// socket g, and returns the kernel's verdict on it.
//
// The netlink library asks for an acknowledgement of every message and an
// echo of every rule, and reads them one system call pair at a time: for a
// whole table, about 80 replies that cost more than the kernel's commit.
// The kernel processes a batch within the sendmsg call and reports every
// message it refuses whether asked to or not, so the batch goes without
// either flag, and then the generation is asked for: every reply before
// the generation's is the batch's, and no error among them means it was
// committed. The library still encodes the messages: it builds them on
// a connection that hands the batch over instead of sending it. gen is
// the generation the kernel answered with, after the batch (0 when no
// batch was sent or the answer was not read).
func applyBatch(g *genConn, queue func(*nftables.Conn) error) (gen uint32, err error) {
	var batch []netlink.Message
	builder, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		if req == nil {
			// The library waits for one acknowledgement per message.
			return []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}}, nil
		}
		batch = append(batch, req...)
		return nil, nil
	}))
	if err != nil {
		return 0, fmt.Errorf("encode batch: %w", err)
	}
	if err := queue(builder); err != nil {
		return 0, err
	}
	if err := builder.Flush(); err != nil {
		return 0, fmt.Errorf("encode batch: %w", err)
	}
	if len(batch) == 0 {
		return 0, nil
	}
	for i := range batch {
		batch[i].Header.Flags &^= netlink.Acknowledge | netlink.Echo
		batch[i].Header.Sequence, batch[i].Header.PID = 0, 0
	}
	if g == nil {
		return 0, errors.New("send batch: no netlink socket")
	}
	if err := g.conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return 0, fmt.Errorf("send batch: %w", err)
	}
	defer g.conn.SetReadDeadline(time.Time{})
	if _, err := g.conn.SendMessages(batch); err != nil {
		return 0, fmt.Errorf("send batch: %w", err)
	}
	// Its own sendmsg: the kernel reads nothing after a batch's end
	// in the same one.
	if _, err := g.conn.Send(genRequest()); err != nil {
		return 0, fmt.Errorf("send batch: %w", err)
	}
	var errs error
	for {
		msgs, err := g.conn.Receive()
		var errno unix.Errno
		switch {
		case err == nil:
		case errors.As(err, &errno) && errno != unix.ENOBUFS && errno != unix.EAGAIN && errno != unix.ETIMEDOUT && errno != unix.EINTR:
			// A message the kernel refused; the rest of its
			// answers still come, up to the generation's.
			errs = errors.Join(errs, err)
			continue
		default:
			return 0, errors.Join(errs, fmt.Errorf("read the kernel's answer to the batch: %w", err))
		}
		for _, m := range msgs {
			if m.Header.Type == netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWGEN) {
				gen, _ := genOf([]netlink.Message{m})
				return gen, errs
			}
		}
	}
}

func genRequest() netlink.Message {
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}
}
