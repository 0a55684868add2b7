"""The search: the engine (proposals, selection, resume), its files, plots, budget constraints, the Pareto strategy and the fitness sanity check. Fitness is a callable: no stage code here."""
