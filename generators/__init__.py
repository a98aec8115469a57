"""The GLAN stages: taxonomy expansion, subjects, syllabi, sampling, questions, answers."""
