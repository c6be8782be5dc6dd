package main

import (
	"context"
	"os"
	"os/signal"
)

// notifyContext is signal.NotifyContext(parent, sigs...), with the
// handlers registered off the caller's path. Registering the process's
// first handlers waits for the runtime to start and hand over to the
// thread that owns the signal mask: about a quarter of a millisecond, as
// much as building the command being run, which every one-shot install of
// an init container or CNI plugin would otherwise wait for. Until the
// registration is done a signal has its default effect, as it has before
// main runs; a process killed there leaves what any kill leaves, which
// the engines recognise.
//
// The first signal cancels the context and gives the signals their
// default effect back, so that a second one ends a process that does not
// stop in time. registered, when not nil, is called once the handlers are
// in place.
func notifyContext(parent context.Context, registered func(), sigs ...os.Signal) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	go func() {
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
	}()
	return ctx, cancel
}
