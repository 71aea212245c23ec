// Package k8s_test checks meterd's Kubernetes manifests: every document of
// every *.yaml here decodes strictly (no unknown or duplicate field, every
// quantity and port valid) into the Kubernetes API type of its apiVersion
// and kind (k8s.io/api, and the Prometheus Operator's types for
// ServiceMonitor and PrometheusRule), and the objects fit together: the
// selectors select the pods, the ServiceMonitor scrapes a port the Service
// has, the pods run as the image's non-root user on a read-only root
// filesystem. That the metrics they name exist is cmd/meterd's
// TestDashboardAndAlertMetricsExist.
package k8s_test

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// imageUser is the user of k8s/Containerfile (USER 65532:65532).
const imageUser = 65532

// kinds are the objects the manifests may hold, by apiVersion and kind.
var kinds = map[string]func() any{
	"v1/Service":                              func() any { return &corev1.Service{} },
	"apps/v1/StatefulSet":                     func() any { return &appsv1.StatefulSet{} },
	"policy/v1/PodDisruptionBudget":           func() any { return &policyv1.PodDisruptionBudget{} },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return &monitoringv1.ServiceMonitor{} },
	"monitoring.coreos.com/v1/PrometheusRule": func() any { return &monitoringv1.PrometheusRule{} },
}

// documentSep splits a YAML stream into its documents.
var documentSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeAll decodes every document of every k8s/*.yaml strictly into its
// type.
func decodeAll(t *testing.T) []any {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var objs []any
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range documentSep.Split(string(b), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s document %d: %v", f, i+1, err)
			}
			newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
			if !ok {
				t.Fatalf("%s document %d: %s %s is not a kind this test knows; add its type to kinds", f, i+1, tm.APIVersion, tm.Kind)
			}
			obj := newObj()
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Fatalf("%s document %d (%s): %v", f, i+1, tm.Kind, err)
			}
			objs = append(objs, obj)
		}
	}
	return objs
}

func stripComments(doc string) string {
	var b bytes.Buffer
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// one returns the only object of type T.
func one[T any](t *testing.T, objs []any) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("%d objects of type %T, want 1", len(found), zero)
	}
	return found[0]
}

func TestManifestsDecodeStrictly(t *testing.T) {
	objs := decodeAll(t)
	sts := one[*appsv1.StatefulSet](t, objs)
	svc := one[*corev1.Service](t, objs)
	pdb := one[*policyv1.PodDisruptionBudget](t, objs)
	sm := one[*monitoringv1.ServiceMonitor](t, objs)
	rules := one[*monitoringv1.PrometheusRule](t, objs)

	pod := labels.Set(sts.Spec.Template.Labels)
	selects := func(what string, sel *metav1.LabelSelector, set labels.Set) {
		t.Helper()
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil || s.Empty() || !s.Matches(set) {
			t.Errorf("%s's selector %v does not select %v (%v)", what, sel, set, err)
		}
	}
	selects("the StatefulSet", sts.Spec.Selector, pod)
	selects("the PodDisruptionBudget", pdb.Spec.Selector, pod)
	selects("the ServiceMonitor", &sm.Spec.Selector, labels.Set(svc.Labels))
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(pod) {
		t.Errorf("the Service's selector %v does not select the pods %v", svc.Spec.Selector, pod)
	}
	if pdb.Spec.MinAvailable == nil && pdb.Spec.MaxUnavailable == nil {
		t.Error("the PodDisruptionBudget sets neither minAvailable nor maxUnavailable")
	}

	// The pods: the image's user, no root, nothing writable but the volume.
	spec := sts.Spec.Template.Spec
	if sc := spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot ||
		sc.RunAsUser == nil || *sc.RunAsUser != imageUser || sc.FSGroup == nil || *sc.FSGroup != imageUser {
		t.Errorf("pod securityContext %+v: want runAsNonRoot, runAsUser and fsGroup %d", spec.SecurityContext, imageUser)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
		len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("container securityContext %+v: want a read-only root, no privilege escalation, every capability dropped", c.SecurityContext)
	}
	if !strings.HasPrefix(c.Image, "meterd:") {
		t.Errorf("image %q: want meterd:<tag> (make image)", c.Image)
	}
	dataMounted := false
	for _, m := range c.VolumeMounts {
		if m.MountPath == "/var/lib/meterd" && m.Name == sts.Spec.VolumeClaimTemplates[0].Name {
			dataMounted = true
		}
	}
	if !dataMounted || !strings.Contains(strings.Join(c.Args, " "), "--data-dir=/var/lib/meterd") {
		t.Errorf("the data directory is not the volume claim: args %v, mounts %v", c.Args, c.VolumeMounts)
	}

	// The ServiceMonitor scrapes /metrics on a port the Service has.
	ports := map[string]bool{}
	for _, p := range svc.Spec.Ports {
		ports[p.Name] = true
	}
	if len(sm.Spec.Endpoints) == 0 {
		t.Fatal("the ServiceMonitor has no endpoint")
	}
	for _, e := range sm.Spec.Endpoints {
		if !ports[e.Port] || e.Path != "/metrics" {
			t.Errorf("ServiceMonitor endpoint port %q path %q: want /metrics on a port of the Service (%v)", e.Port, e.Path, ports)
		}
	}

	// Every alert has an expression, a severity and a summary.
	alerts := 0
	for _, g := range rules.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if r.Expr.String() == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: want an expr, a severity label, a summary and a description", r.Alert)
			}
		}
	}
	if alerts == 0 {
		t.Error("the PrometheusRule has no alert")
	}
}

// TestStrictDecodingRefusesUnknownFields: the decoding this test relies on
// refuses a misspelt field, which a plain decode would drop silently.
func TestStrictDecodingRefusesUnknownFields(t *testing.T) {
	doc := "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: x}\nspec:\n  minAvailabe: 1\n"
	if err := yaml.UnmarshalStrict([]byte(doc), &policyv1.PodDisruptionBudget{}); err == nil || !strings.Contains(err.Error(), "minAvailabe") {
		t.Fatalf("a misspelt field: %v", err)
	}
	doc = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports: [{port: 99999999999}]\n"
	if err := yaml.UnmarshalStrict([]byte(doc), &corev1.Service{}); err == nil {
		t.Fatal("a port beyond int32: accepted")
	}
}
