"""BlueFog launchers.

* ``bfrun`` (:func:`bluefog.run.run.main`) starts a BlueFog job through Open MPI's ``mpirun`` or
  MPICH's Hydra ``mpiexec``.
* ``ibfrun`` (:func:`bluefog.run.interactive_run.main`) starts an ipyparallel controller plus one
  engine per MPI rank, for notebooks.

The command line is built by the pure functions in :mod:`bluefog.run.launch_command`; the MPI
flavour is told by :mod:`bluefog.run.mpi_vendor`.  This package imports nothing at load time so
that ``python -m bluefog.run.run`` stays cheap.
"""
