"""For curators: ontology checks, its documentation, the impact of a change, re-reasoning."""
