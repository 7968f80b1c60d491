// Command coredns is CoreDNS v1.15.0 with only the plugins the dev cluster's Corefile uses
// (devcluster/cxg_devcluster/node.py). CoreDNS's own main links every plugin, the cloud
// providers' SDKs included, and took 9 minutes to build cold here; plugins register themselves
// when imported, so a main that imports coremain and these six is the whole server we run.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
