// Command rawssa is the benchmark's yardstick: the same server-side-apply
// requests ood-k8s-bootstrap's reconcile sends for N users (namespace first,
// then the namespaced objects at once), with no program logic at all, over
// one HTTP/2 connection with bounded concurrency. What it achieves is the
// practical limit of the API server on this machine.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

func main() {
	server := flag.String("server", "", "API server URL")
	caFile := flag.String("ca", "", "CA file")
	tokenFile := flag.String("token-file", "", "file holding the bearer token")
	users := flag.Int("users", 1000, "number of users")
	prefix := flag.String("prefix", "raw-", "namespace prefix")
	concurrency := flag.Int("concurrency", 32, "users at once")
	flag.Parse()

	ca, err := os.ReadFile(*caFile)
	check(err)
	tok, err := os.ReadFile(*tokenFile)
	check(err)
	token := strings.TrimSpace(string(tok))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
	}, Timeout: 30 * time.Second}

	apply := func(path, body string) {
		req, err := http.NewRequest(http.MethodPatch, *server+path+"?fieldManager=rawssa&force=true&fieldValidation=Ignore", bytes.NewBufferString(body))
		check(err)
		req.Header.Set("Content-Type", "application/apply-patch+yaml")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		check(err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 300 {
			fmt.Fprintf(os.Stderr, "%s: %d\n", path, resp.StatusCode)
			os.Exit(1)
		}
	}
	now := time.Now().Unix()
	start := time.Now()
	sem := make(chan struct{}, *concurrency)
	var wg sync.WaitGroup
	for i := 0; i < *users; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			u := fmt.Sprintf("u%d", i)
			ns := *prefix + u
			apply("/api/v1/namespaces/"+ns, fmt.Sprintf(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":%q,"labels":{"app.kubernetes.io/name":"open-ondemand"},"annotations":{"openondemand.org/last-hook-execution":"%d"}}}`, ns, now))
			objs := map[string]string{
				"/apis/networking.k8s.io/v1/namespaces/" + ns + "/networkpolicies/deny-from-other-namespaces": fmt.Sprintf(`{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"deny-from-other-namespaces","namespace":%q},"spec":{"podSelector":{},"ingress":[{"from":[{"podSelector":{}},{"ipBlock":{"cidr":"127.0.0.1/32"}}]}],"policyTypes":["Ingress"]}}`, ns),
				"/apis/rbac.authorization.k8s.io/v1/namespaces/" + ns + "/rolebindings/" + u + "-ood-user":        fmt.Sprintf(`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"%s-ood-user","namespace":%q},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"ood-user"},"subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":%q}]}`, u, ns, u),
				"/apis/rbac.authorization.k8s.io/v1/namespaces/" + ns + "/rolebindings/" + u + "-ood-initializer": fmt.Sprintf(`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"%s-ood-initializer","namespace":%q},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"ood-initializer"},"subjects":[{"kind":"ServiceAccount","name":"default","namespace":%q}]}`, u, ns, ns),
				"/apis/rbac.authorization.k8s.io/v1/namespaces/" + ns + "/rolebindings/" + u + "-job-pod-reaper-rolebinding": fmt.Sprintf(`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"%s-job-pod-reaper-rolebinding","namespace":%q},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"job-pod-reaper"},"subjects":[{"kind":"ServiceAccount","name":"job-pod-reaper","namespace":"job-pod-reaper"}]}`, u, ns),
			}
			var inner sync.WaitGroup
			for path, body := range objs {
				inner.Add(1)
				go func() { defer inner.Done(); apply(path, body) }()
			}
			inner.Wait()
		}(i)
	}
	wg.Wait()
	fmt.Printf("%.3f\n", time.Since(start).Seconds())
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "rawssa:", err)
		os.Exit(1)
	}
}
