"""The HTTP surface: Flask blueprints, request helpers, the OpenAPI document."""
