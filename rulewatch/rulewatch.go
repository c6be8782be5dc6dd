// Package rulewatch tells when the netfilter ruleset of the current network
// namespace changes: nf_tables multicasts every committed change (by nft,
// iptables-nft, or any other netlink client) to the NFNLGRP_NFTABLES group.
// The legacy iptables backend sends no such notification; its changes can
// only be seen by reading the rules again.
package rulewatch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Watch returns a channel that receives a value soon after each change to
// the ruleset (several changes committed together give one value), until
// ctx ends. The socket is opened in the calling thread's network namespace.
func Watch(ctx context.Context) (<-chan struct{}, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)})
	if err != nil {
		return nil, fmt.Errorf("watch the nftables ruleset: %w", err)
	}
	out := make(chan struct{}, 1)
	raw := make(chan struct{}, 1)
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	go func() {
		defer close(raw)
		for {
			_, err := conn.Receive()
			if err != nil {
				var oe *netlink.OpError
				// A full socket buffer lost notifications: a change
				// happened all the same.
				if errors.As(err, &oe) && errors.Is(oe.Err, unix.ENOBUFS) {
					signal(raw)
					continue
				}
				return
			}
			signal(raw)
		}
	}()
	go func() {
		defer close(out)
		for range raw {
			// A transaction arrives as a burst of messages (one per
			// table, chain and rule, then the new generation): wait
			// for the burst to end, so one change is one signal.
			settle := time.NewTimer(2 * time.Millisecond)
		burst:
			for {
				select {
				case _, ok := <-raw:
					if !ok {
						settle.Stop()
						break burst
					}
					settle.Reset(2 * time.Millisecond)
				case <-settle.C:
					break burst
				}
			}
			signal(out)
		}
	}()
	return out, nil
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
