"""The SingleUserInstance API: the resource model, its CRD, the admission policy (what is refused
or neutralised) and who may reach an instance."""
