//go:build tools

// Package monitoring pins the prometheus-operator's API types, from which
// e2e/scripts/monitoring-crds.sh generates the PodMonitor CRD with
// controller-gen (the module proxy serves these types, not the
// prometheus-operator's own module with its CRD files).
package monitoring

import _ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
