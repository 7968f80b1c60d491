//go:build tools

// Package tools pins the command this module builds.
package tools

import _ "github.com/oauth2-proxy/oauth2-proxy/v7"
