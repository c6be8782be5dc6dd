package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
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
// acknowledgements, and then the generation is asked for: every reply
// before the generation's is the batch's, and no error among them means it
// was committed. The library still encodes the messages: it builds them on
// a connection that hands the batch over instead of sending it. gen is the
// generation the kernel answered with, after the batch (0 when no batch
// was sent or the answer was not read).
//
// With echo, the rules keep their echo flag and come back as the kernel
// lists them (the commit gathers its notifications into a few messages, a
// page each, read here into one large buffer): the table's rules, read
// back without a dump after it.
func applyBatch(g *genConn, queue func(*batch) error, echo bool) (gen uint32, echoed []dumpedRule, err error) {
	msgs, err := encodeBatch(queue, false)
	if err != nil || len(msgs) == 0 {
		return 0, nil, err
	}
	return sendBatch(g, msgs, echo)
}

// encodeBatch returns the messages of the batch queue adds, framed by the
// batch's begin and end (none when queue adds nothing).
func encodeBatch(queue func(*batch) error, rulesViaLibrary bool) ([]netlink.Message, error) {
	var msgs []netlink.Message
	builder, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		if req == nil {
			// The library waits for one acknowledgement per message.
			return []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}}, nil
		}
		msgs = append(msgs, req...)
		return nil, nil
	}))
	if err != nil {
		return nil, fmt.Errorf("encode batch: %w", err)
	}
	b := &batch{Conn: builder, viaLibrary: rulesViaLibrary}
	if err := queue(b); err != nil {
		return nil, err
	}
	if err := builder.Flush(); err != nil {
		return nil, fmt.Errorf("encode batch: %w", err)
	}
	if len(b.rules) > 0 {
		if len(msgs) < 2 {
			return nil, errors.New("encode batch: rules without the batch's begin and end")
		}
		// After the library's messages, before the batch's end.
		end := msgs[len(msgs)-1]
		msgs = append(append(msgs[:len(msgs)-1], b.rules...), end)
	}
	return msgs, nil
}

// sendBatch sends an encoded batch over g (see applyBatch).
func sendBatch(g *genConn, msgs []netlink.Message, echo bool) (gen uint32, echoed []dumpedRule, err error) {
	for i := range msgs {
		msgs[i].Header.Flags &^= netlink.Acknowledge
		if !echo || msgs[i].Header.Type != newRuleType {
			msgs[i].Header.Flags &^= netlink.Echo
		} else {
			msgs[i].Header.Flags |= netlink.Echo
		}
		msgs[i].Header.Sequence, msgs[i].Header.PID = 0, 0
	}
	if g == nil {
		return 0, nil, errors.New("send batch: no netlink socket")
	}
	rc, err := g.conn.SyscallConn()
	if err != nil {
		return 0, nil, fmt.Errorf("send batch: %w", err)
	}
	if err := g.conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return 0, nil, fmt.Errorf("send batch: %w", err)
	}
	defer g.conn.SetReadDeadline(time.Time{})
	if _, err := g.conn.SendMessages(msgs); err != nil {
		return 0, nil, fmt.Errorf("send batch: %w", err)
	}
	// Its own sendmsg: the kernel reads nothing after a batch's end
	// in the same one.
	req, err := g.conn.Send(genRequest())
	if err != nil {
		return 0, nil, fmt.Errorf("send batch: %w", err)
	}
	buf := make([]byte, dumpBuffer)
	var errs error
	for {
		n, err, rerr := recvInto(rc, buf)
		if err != nil {
			return 0, nil, errors.Join(errs, fmt.Errorf("read the kernel's answer to the batch: %w", err))
		}
		if rerr != nil {
			// ENOBUFS: answers were lost, the echoes or an
			// error among them; the batch's fate is unknown.
			return 0, nil, errors.Join(errs, fmt.Errorf("read the kernel's answer to the batch: %w", rerr))
		}
		parts, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return 0, nil, errors.Join(errs, fmt.Errorf("read the kernel's answer to the batch: %w", err))
		}
		for _, m := range parts {
			switch {
			case m.Header.Type == unix.NLMSG_ERROR && m.Header.Seq == req.Header.Sequence:
				return 0, nil, errors.Join(errs, fmt.Errorf("read nftables generation: %w", errnoOf(m.Data)))
			case m.Header.Type == unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data)); code < 0 {
						// A message the kernel refused; the rest
						// of its answers still come, up to the
						// generation's.
						errs = errors.Join(errs, fmt.Errorf("netlink receive: %w", syscall.Errno(-code)))
					}
				}
			case netlink.HeaderType(m.Header.Type) == newRuleType && echo:
				r, err := decodeRule(m.Data[min(4, len(m.Data)):])
				if err != nil {
					return 0, nil, errors.Join(errs, fmt.Errorf("read the kernel's echo of a rule: %w", err))
				}
				echoed = append(echoed, r)
			case m.Header.Type == unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWGEN && m.Header.Seq == req.Header.Sequence:
				gen, _ := genOf([]netlink.Message{{Data: m.Data}})
				if errs != nil {
					echoed = nil
				}
				return gen, echoed, errs
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

// errnoOf is the error an NLMSG_ERROR message carries.
func errnoOf(data []byte) error {
	if len(data) < 4 {
		return errors.New("truncated netlink error")
	}
	return syscall.Errno(-int32(binary.NativeEndian.Uint32(data)))
}
