"""Where cases live: the SiteStore seam and its implementations."""
