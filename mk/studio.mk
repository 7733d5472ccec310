# The studio's code editor (CodeMirror 6 + Jinja), bundled from the npm registry with
# esbuild into a file the studio serves itself: no CDN at run time.
STUDIO_FRONTEND := services/outreach/studio/frontend
STUDIO_BUNDLE := services/outreach/studio/static/editor.js
NPM ?= npm

$(STUDIO_BUNDLE): $(STUDIO_FRONTEND)/package.json $(STUDIO_FRONTEND)/package-lock.json $(STUDIO_FRONTEND)/editor.mjs
	cd $(STUDIO_FRONTEND) && $(NPM) ci --no-audit --no-fund --loglevel=error && $(NPM) run --silent build

.PHONY: studio-assets
studio-assets: $(STUDIO_BUNDLE) ## bundle the studio's code editor (npm, esbuild)

.PHONY: studio
studio: venv studio-assets ## serve the template studio on OUTREACH_STUDIO_PORT (8084)
	$(PY) -m services.outreach.studio
