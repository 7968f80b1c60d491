//go:build tools

// Package tools pins CoreDNS, the dev cluster's DNS server for its real node (kubernetes plugin).
package tools

import _ "github.com/coredns/coredns"
