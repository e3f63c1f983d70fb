"""``nnunet-nas run``: a whole study, from a dataset to a ranked, ensembled, submittable model, as a graph of
nnU-Net's own commands (:mod:`.settings` what the user asks for, :mod:`.steps` the commands and their order,
:mod:`.ledger` what each step did and with which settings, :mod:`.executor` running them, :mod:`.report` the
comparison, :mod:`.runner` the whole)."""
