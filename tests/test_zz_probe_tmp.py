from tests.test_signin import *  # noqa
from tests.test_signin import Browser, login_form_action
def test_probe(signin_edge):
    b = Browser(signin_edge)
    page = b.get(signin_edge.owner_only.url)
    print([(c.name, c.domain, c.path, c.secure, c.version) for c in b.session.cookies])
    r = b.session.post(login_form_action(page), data={"username": "owner", "password": signin_edge.realm.owner.password, "credentialId": ""})
    for h in r.history + [r]:
        print(h.status_code, h.url, h.request.headers.get("Cookie"))
    print(r.text[:3000])
    assert 0
