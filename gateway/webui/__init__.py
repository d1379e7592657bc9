"""Open WebUI's own web app, installed into the data dir and served by the gateway.

    gateway webui install   pip downloads the `open-webui` wheel (nothing of it is
                            installed), its built frontend is unpacked into
                            DATA_DIR/webui/<version>/frontend/ with the wheel's licence
                            files beside it, and DATA_DIR/webui/installed.json says which
                            version `gateway serve` serves (install.py, layout.py)
    gateway serve           serves it at the root of the host: the files as they are,
                            the SPA's own paths answered with its index.html (serving.py)

Open WebUI's build asks for `/_app/…`, `/static/…`, `/api/…` and `/ws/socket.io` from
the root of the host and navigates to root paths (`/c/<id>`, `/auth`): it has no
base-path setting, so it is served only where the gateway is at the root of its host
(not under GATEWAY_BASE_PATH nor behind a proxy's X-Forwarded-Prefix; README, "The
web app").  Nothing of Open WebUI is in this repository.
"""
