"""captchalab: read text captchas, solve picture grids, search images — offline, with models you can train."""

__version__ = "0.1.0"
