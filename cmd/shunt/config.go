package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/shunt-dev/shunt/internal/confnode"
	"github.com/shunt-dev/shunt/redirect"
)

// usageError is a mistake in how a command was called (exit status 2).
func usageErrorf(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

// captureFlags registers one flag per capture configuration key, so every
// key is settable on the command line under its kebab-case name, and
// --config for the file.
func captureFlags(cmd *cobra.Command, only ...string) {
	fs := cmd.Flags()
	fs.String("config", "", "YAML config file with the same keys as the flags, in camelCase (env SHUNT_CONFIG)")
	for _, o := range redirect.Options() {
		if len(only) > 0 && !containsString(only, o.Key) {
			continue
		}
		help := o.Help
		if o.Bool {
			fs.Bool(o.Flag, false, help)
			continue
		}
		fs.String(o.Flag, o.Default, help)
	}
}

// loadCaptureConfig merges, in increasing precedence: defaults, the config
// file, SHUNT_* environment variables, and the flags given.
func loadCaptureConfig(cmd *cobra.Command) (*redirect.Config, error) {
	cfg := redirect.NewConfig()
	file, _ := cmd.Flags().GetString("config")
	if !cmd.Flags().Changed("config") {
		file = os.Getenv("SHUNT_CONFIG")
	}
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read config file: %w", err)
		}
		if err := loadConfigFile(cfg, file, data); err != nil {
			return nil, err
		}
	}
	if err := cfg.LoadEnv(os.Environ(), envIgnored()...); err != nil {
		return nil, err
	}
	for _, w := range cfg.Warnings() {
		slog.Warn(w)
	}
	for _, o := range redirect.Options() {
		f := cmd.Flags().Lookup(o.Flag)
		if f == nil || !f.Changed {
			continue
		}
		if err := cfg.Set(o.Key, f.Value.String(), "flag --"+o.Flag); err != nil {
			return nil, err
		}
	}
	if cfg.Get("netns") != "" && !cfg.IsSet("stateDir") {
		// One state per namespace, so installs into several namespaces
		// from the host do not overwrite each other's record.
		_ = cfg.Set("stateDir", filepath.Join(redirect.DefaultStateDir, "netns", filepath.Base(cfg.Get("netns"))), "default")
	}
	if f := cmd.Flags().Lookup("admin"); f != nil && !cfg.IsSet("adminPort") {
		// shunt run guards the port its admin endpoint really uses.
		port := "0"
		if a := f.Value.String(); a != "off" && a != "" {
			_, p, err := net.SplitHostPort(a)
			if err != nil {
				return nil, usageErrorf("--admin %q: not HOST:PORT: %v", a, err)
			}
			port = p
		}
		if err := cfg.Set("adminPort", port, "flag --admin"); err != nil {
			return nil, err
		}
	}
	if ns := cfg.Get("netns"); ns != "" {
		if _, err := os.Stat(ns); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("netns: invalid value %q: no such file", ns)
		}
	}
	return cfg, nil
}

// envIgnored are SHUNT_ variables that configure something other than
// capture.
func envIgnored() []string { return []string{"SHUNT_CONFIG", "SHUNT_LOG_LEVEL"} }

func containsString(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// loadConfigFile merges a config file into cfg, leaving out the keys that
// `shunt run` reads itself (runOnlyConfigKeys).
func loadConfigFile(cfg *redirect.Config, file string, data []byte) error {
	m, err := confnode.Parse(data)
	if err != nil {
		return fmt.Errorf("parse config %s: %w", file, err)
	}
	if m == nil {
		return nil
	}
	if m.Kind == confnode.Mapping {
		kept := m.Content[:0:0]
		for i := 0; i+1 < len(m.Content); i += 2 {
			if !containsString(runOnlyConfigKeys, m.Content[i].Value) {
				kept = append(kept, m.Content[i], m.Content[i+1])
			}
		}
		m.Content = kept
	}
	return cfg.LoadNode(file, m)
}

// runOnlyConfigKeys are config file keys that `shunt run` reads itself; the
// capture configuration ignores them. They are listed here, not beside run,
// because the lean build has no run and reads the same file.
var runOnlyConfigKeys = []string{"xdsNodeMetadata"}
