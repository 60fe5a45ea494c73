"""pilotfactory: a pilot and VM factory for HTCondor pools."""

__version__ = "0.1.0"
