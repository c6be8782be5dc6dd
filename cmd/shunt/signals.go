package main

import (
	"context"
	"os"
	"os/signal"
	"time"
)

// notifyContext is signal.NotifyContext(parent, sigs...), with the
// handlers registered off the caller's path, after the delay after.
// Registering the process's first handlers starts the runtime's signal
// thread, and waking it and the goroutine that waits on it costs a
// one-shot install of an init container or CNI plugin 0.5-1 ms of its
// 10-20 and more CPU than that, which is why such commands wait
// (oneShotSignalDelay): one that ends before never registers. Until the
// registration is done a signal has its default effect, as it has before
// main runs; a process killed there leaves what any kill leaves, which
// the engines recognise. A command that waits longer (for another
// install's lock, or for --validate's probe) has its handlers by then.
//
// The first signal cancels the context and gives the signals their
// default effect back, so that a second one ends a process that does not
// stop in time. registered, when not nil, is called once the handlers are
// in place.
func notifyContext(parent context.Context, registered func(), after time.Duration, sigs ...os.Signal) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	watch := func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, sigs...)
		defer signal.Stop(ch)
		if registered != nil {
			registered()
		}
		select {
		case <-ch:
			cancel()
		case <-ctx.Done():
		}
	}
	if after <= 0 {
		go watch()
		return ctx, cancel
	}
	t := time.AfterFunc(after, func() {
		if ctx.Err() == nil {
			watch()
		}
	})
	return ctx, func() {
		t.Stop()
		cancel()
	}
}

// oneShotSignalDelay is how long a one-shot command runs before its
// signal handlers are registered: longer than an install takes under
// load, short beside any wait worth interrupting.
const oneShotSignalDelay = 100 * time.Millisecond
