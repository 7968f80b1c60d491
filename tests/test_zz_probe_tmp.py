import requests
from tests.fixtures_signin import *  # noqa
pytest_plugins = ["tests.fixtures_signin"]
def test_probe(signin_edge):
    s = requests.Session()
    r = s.get(signin_edge.owner_only.url)
    for h in r.history + [r]:
        print(h.status_code, h.url, h.headers.get("Set-Cookie"))
    print([ (c.name, c.domain, c.path, c.secure) for c in s.cookies])
    assert 0
