// Package kubeapi reads the two objects the CNI plugin needs from the
// Kubernetes API -- a pod and its namespace -- with nothing but crypto/tls,
// a small HTTP/1.1 client (http.go) and a kubeconfig file.
//
// The plugin runs once per pod start, as a new process: linking client-go
// would cost every pod start its package initialisation (tens of
// milliseconds, tens of MiB) for two GET requests. The node agent, a
// long-running process, keeps client-go.
package kubeapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/shunt-dev/shunt/cni"
)

// kubeconfig is the part of the kubeconfig format the plugin honours. Fields
// it cannot honour are decoded only to be refused by name.
type kubeconfig struct {
	CurrentContext string `yaml:"current-context"`
	Clusters       []struct {
		Name    string `yaml:"name"`
		Cluster struct {
			Server                   string `yaml:"server"`
			CertificateAuthority     string `yaml:"certificate-authority"`
			CertificateAuthorityData string `yaml:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `yaml:"insecure-skip-tls-verify"`
			TLSServerName            string `yaml:"tls-server-name"`
			ProxyURL                 string `yaml:"proxy-url"`
		} `yaml:"cluster"`
	} `yaml:"clusters"`
	Users []struct {
		Name string `yaml:"name"`
		User struct {
			Token                 string         `yaml:"token"`
			TokenFile             string         `yaml:"tokenFile"`
			ClientCertificate     string         `yaml:"client-certificate"`
			ClientCertificateData string         `yaml:"client-certificate-data"`
			ClientKey             string         `yaml:"client-key"`
			ClientKeyData         string         `yaml:"client-key-data"`
			Username              string         `yaml:"username"`
			Password              string         `yaml:"password"`
			Exec                  map[string]any `yaml:"exec"`
			AuthProvider          map[string]any `yaml:"auth-provider"`
		} `yaml:"user"`
	} `yaml:"users"`
	Contexts []struct {
		Name    string `yaml:"name"`
		Context struct {
			Cluster string `yaml:"cluster"`
			User    string `yaml:"user"`
		} `yaml:"context"`
	} `yaml:"contexts"`
}

// Client is a Kubernetes API endpoint with the credentials to read it.
type Client struct {
	server *url.URL
	tls    *tls.Config
	// authorization is the Authorization header's value (bearer token or
	// basic), "" for none.
	authorization string
}

// Load builds a client from the current context of a kubeconfig file.
// Relative file names in it are taken from the file's directory, as kubectl
// does.
func Load(path string) (*Client, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	c, err := parse(b, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return c, nil
}

func parse(b []byte, dir string) (*Client, error) {
	var kc kubeconfig
	if err := yaml.Unmarshal(b, &kc); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	ctxName := kc.CurrentContext
	if ctxName == "" && len(kc.Contexts) == 1 {
		ctxName = kc.Contexts[0].Name
	}
	if ctxName == "" {
		return nil, errors.New("current-context: not set")
	}
	var clusterName, userName string
	found := false
	for _, c := range kc.Contexts {
		if c.Name == ctxName {
			clusterName, userName, found = c.Context.Cluster, c.Context.User, true
		}
	}
	if !found {
		return nil, fmt.Errorf("current-context: no context named %q", ctxName)
	}
	file := func(p string) string {
		if p != "" && !filepath.IsAbs(p) {
			return filepath.Join(dir, p)
		}
		return p
	}
	material := func(field, data, path string) ([]byte, error) {
		if data != "" {
			v, err := base64.StdEncoding.DecodeString(strings.TrimSpace(data))
			if err != nil {
				return nil, fmt.Errorf("%s-data: not base64: %w", field, err)
			}
			return v, nil
		}
		if path == "" {
			return nil, nil
		}
		v, err := os.ReadFile(file(path))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		return v, nil
	}

	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	c := &Client{tls: tlsCfg}
	found = false
	for _, cl := range kc.Clusters {
		if cl.Name != clusterName {
			continue
		}
		found = true
		if cl.Cluster.ProxyURL != "" {
			return nil, fmt.Errorf("cluster %s: proxy-url %q: not supported by the CNI plugin", clusterName, cl.Cluster.ProxyURL)
		}
		u, err := url.Parse(cl.Cluster.Server)
		if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
			return nil, fmt.Errorf("cluster %s: server %q: want https://HOST[:PORT] (or http://)", clusterName, cl.Cluster.Server)
		}
		c.server = u
		ca, err := material("certificate-authority", cl.Cluster.CertificateAuthorityData, cl.Cluster.CertificateAuthority)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", clusterName, err)
		}
		if len(ca) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(ca) {
				return nil, fmt.Errorf("cluster %s: certificate-authority: no PEM certificate in it", clusterName)
			}
			tlsCfg.RootCAs = pool
		}
		tlsCfg.InsecureSkipVerify = cl.Cluster.InsecureSkipTLSVerify
		tlsCfg.ServerName = cl.Cluster.TLSServerName
	}
	if !found {
		return nil, fmt.Errorf("context %s: no cluster named %q", ctxName, clusterName)
	}
	for _, us := range kc.Users {
		if us.Name != userName {
			continue
		}
		u := us.User
		switch {
		case u.Exec != nil:
			return nil, fmt.Errorf("user %s: exec credentials are not supported by the CNI plugin: give shunt node a kubeconfig with a token or client certificate (its service account's, in a DaemonSet)", userName)
		case u.AuthProvider != nil:
			return nil, fmt.Errorf("user %s: auth-provider is not supported by the CNI plugin: give shunt node a kubeconfig with a token or client certificate", userName)
		}
		cert, err := material("client-certificate", u.ClientCertificateData, u.ClientCertificate)
		if err != nil {
			return nil, fmt.Errorf("user %s: %w", userName, err)
		}
		key, err := material("client-key", u.ClientKeyData, u.ClientKey)
		if err != nil {
			return nil, fmt.Errorf("user %s: %w", userName, err)
		}
		if len(cert) > 0 || len(key) > 0 {
			pair, err := tls.X509KeyPair(cert, key)
			if err != nil {
				return nil, fmt.Errorf("user %s: client certificate and key: %w", userName, err)
			}
			tlsCfg.Certificates = []tls.Certificate{pair}
		}
		token := u.Token
		if token == "" && u.TokenFile != "" {
			t, err := os.ReadFile(file(u.TokenFile))
			if err != nil {
				return nil, fmt.Errorf("user %s: tokenFile: %w", userName, err)
			}
			token = strings.TrimSpace(string(t))
		}
		switch {
		case token != "":
			// A line break would end the header and start another.
			if strings.ContainsFunc(token, func(r rune) bool { return r < ' ' || r == 0x7f }) {
				return nil, fmt.Errorf("user %s: token: contains a control character", userName)
			}
			c.authorization = "Bearer " + token
		case u.Username != "":
			c.authorization = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.Username+":"+u.Password))
		}
	}
	return c, nil
}

// object is what the plugin reads of a pod or a namespace.
type object struct {
	Metadata struct {
		Annotations map[string]string `json:"annotations"`
		Labels      map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		HostNetwork bool `json:"hostNetwork"`
	} `json:"spec"`
}

// status is the body of an API error (metav1.Status).
type status struct {
	Message string `json:"message"`
	Reason  string `json:"reason"`
}

func (s *session) object(ctx context.Context, path string) (*object, error) {
	u := *s.c.server
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	resp, err := s.get(ctx, u.RequestURI())
	if err != nil {
		return nil, err
	}
	body := resp.body
	if resp.code != 200 {
		var st status
		if json.Unmarshal(body, &st) == nil && st.Message != "" {
			return nil, fmt.Errorf("%s: %s", resp.status, st.Message)
		}
		return nil, fmt.Errorf("%s", resp.status)
	}
	var o object
	if err := json.Unmarshal(body, &o); err != nil {
		return nil, fmt.Errorf("decode response: %w", err)
	}
	return &o, nil
}

// PodSettings reads the shunt settings of one pod and of its namespace.
func (c *Client) PodSettings(ctx context.Context, namespace, name string) (*cni.PodSettings, error) {
	s := &session{c: c}
	defer s.close()
	pod, err := s.object(ctx, "/api/v1/namespaces/"+url.PathEscape(namespace)+"/pods/"+url.PathEscape(name))
	if err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	ns, err := s.object(ctx, "/api/v1/namespaces/"+url.PathEscape(namespace))
	if err != nil {
		return nil, fmt.Errorf("get namespace %s: %w", namespace, err)
	}
	return &cni.PodSettings{
		Namespace:            namespace,
		Name:                 name,
		PodAnnotations:       pod.Metadata.Annotations,
		NamespaceAnnotations: ns.Metadata.Annotations,
		NamespaceLabels:      ns.Metadata.Labels,
		HostNetwork:          pod.Spec.HostNetwork,
	}, nil
}

// PodLookup implements cni.PodLookup.
func PodLookup(ctx context.Context, kubeconfig, namespace, name string) (*cni.PodSettings, error) {
	c, err := Load(kubeconfig)
	if err != nil {
		return nil, err
	}
	return c.PodSettings(ctx, namespace, name)
}
