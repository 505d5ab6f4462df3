"""The command lines: ``mrl-train`` (:mod:`.train`) and ``mrl-recommend``
(:mod:`.recommend`)."""
