"""The toy corpus and BabyLM-format eval sets (`python -m cdhpc.toydata OUT`): the lexicon and
phrase makers (`lexicon`), the grammaticality checker (`grammar`), the corpus documents (`corpus`),
the eval sets (`evalsets`), assembling and writing (`build`), toy tasks (`tasks`)."""
