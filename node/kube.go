package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/shunt-dev/shunt/cni"
)

// KubePodLookup implements cni.PodLookup with the credentials of a
// kubeconfig file (the one the node agent writes for the plugin).
func KubePodLookup(ctx context.Context, kubeconfig, namespace, name string) (*cni.PodSettings, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return PodSettings(ctx, client, namespace, name)
}

// PodSettings reads the shunt settings of one pod and of its namespace.
func PodSettings(ctx context.Context, client kubernetes.Interface, namespace, name string) (*cni.PodSettings, error) {
	pod, err := client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	ns, err := client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get namespace %s: %w", namespace, err)
	}
	return &cni.PodSettings{
		Namespace:            namespace,
		Name:                 name,
		PodAnnotations:       pod.Annotations,
		NamespaceAnnotations: ns.Annotations,
		NamespaceLabels:      ns.Labels,
		HostNetwork:          pod.Spec.HostNetwork,
	}, nil
}

// FlattenKubeconfig returns the current context of a kubeconfig file alone,
// with the files it names (CA, client certificate and key, token file)
// embedded: the plugin runs on the host, where the agent's paths need not
// exist.
func FlattenKubeconfig(path string) ([]byte, error) {
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	if err := clientcmdapi.MinifyConfig(cfg); err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	if err := clientcmdapi.FlattenConfig(cfg); err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	for name, a := range cfg.AuthInfos {
		if a.TokenFile == "" {
			continue
		}
		tf := a.TokenFile
		if !filepath.IsAbs(tf) {
			tf = filepath.Join(filepath.Dir(path), tf)
		}
		b, err := os.ReadFile(tf)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: user %s: read token file: %w", path, name, err)
		}
		a.Token, a.TokenFile = strings.TrimSpace(string(b)), ""
	}
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return b, nil
}
