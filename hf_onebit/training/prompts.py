"""Writing prompts for teacher self-generated distillation data in the ``"essays"`` style.

Random-first-token sampling (LLM-QAT, the ``"random-start"`` style) gives the teacher's unconditional text; an
instruction-tuned teacher then mostly writes chat transcripts, lists, numbers and code fragments. Asking it for prose
on everyday, technical, historical and scientific subjects gives long runs of ordinary English instead. The prompts
are every ``FORMS x SUBJECTS`` pair, visited in a seeded random order, so that a run of n prompts asks for n
different texts while n is at most the number of pairs. The subjects leave out drinking-water supply, the subject
of the held-out text that ``benchmarks/quality.py`` measures perplexity on.
"""

from __future__ import annotations

import random

FORMS = (
    "Write a long, detailed essay about {}.",
    "Explain in depth how {} works, for a curious reader.",
    "Write an encyclopedia-style article about {}.",
    "Write a magazine feature about {}.",
    "Describe the history of {} in detail.",
    "Write a practical guide to {} for beginners.",
    "Write a report on the main problems of {} and how people address them.",
    "Write a lecture, as plain prose, that introduces students to {}.",
)

SUBJECTS = (
    "bridge inspection and maintenance", "the planning of a bakery's daily production", "the printing press",
    "preparing an airliner for a long-haul flight", "soil fertility on family farms", "how public libraries choose books",
    "running a small ferry service", "balancing supply and demand on an electrical grid", "railway signalling",
    "the postal service", "weather forecasting", "beekeeping", "glass making", "the design of mountain roads",
    "lighthouses", "the chemistry of bread", "coffee roasting", "the invention of the telephone", "volcanoes",
    "plate tectonics", "the life of honey bees", "urban parks", "recycling plastics", "paper making",
    "wind turbines", "solar panels", "the history of the bicycle", "medieval castles", "Roman roads",
    "the Silk Road", "the steam engine", "clock making", "the human immune system", "how vaccines are tested",
    "sleep and memory", "the science of rainbows", "the migration of birds", "coral reefs", "forest fires",
    "managing a hospital emergency department", "school timetables", "running a village shop",
    "how elections are organised", "how a bill becomes law", "municipal budgets", "public transport planning",
    "air traffic control", "container shipping", "warehouse logistics", "the cold chain for food",
    "cheese making", "wine making", "the history of tea", "spices and the spice trade", "textile weaving",
    "dyeing cloth", "the history of maps", "surveying land", "satellite navigation", "the moon landings",
    "telescopes", "the life cycle of stars", "black holes, for a general reader", "the periodic table",
    "batteries", "electric cars", "internal combustion engines", "aircraft wings", "sailing ships",
    "submarines", "tunnel building", "skyscraper foundations", "earthquake-resistant buildings", "concrete",
    "steel making", "copper mining", "the gold rush", "the history of money", "how banks lend",
    "insurance", "inflation", "small business accounting", "the job of a museum curator", "archaeological digs",
    "ancient Egypt", "the Greek city-states", "the Renaissance", "the industrial revolution", "the history of medicine",
    "anaesthesia", "the microscope", "germ theory", "nutrition and diet", "growing vegetables",
    "orchard care", "dairy farming", "fishing fleets", "sheep farming in the hills", "mountain rescue",
    "the fire brigade", "police detective work", "court trials", "translating books", "learning a second language",
    "the history of writing", "typography", "photography", "film making", "radio broadcasting",
    "the history of computers", "how the internet routes data", "databases", "writing reliable software",
    "spreadsheets in offices", "the history of chess", "football tactics", "training for a marathon",
    "the Olympic Games", "mountaineering", "polar exploration", "desert ecosystems", "rivers and floods",
    "canals", "glaciers", "the carbon cycle", "composting", "pollination",
    "the history of architecture", "building a wooden house", "home heating",
    "restoring old furniture", "pottery", "blacksmithing", "the orchestra", "how pianos are made",
    "choir singing", "the history of jazz", "theatre production", "writing a novel", "newspaper editing",
    "public speaking", "negotiation", "project management", "quality control in factories", "car assembly lines",
    "robotics in manufacturing", "3D printing", "the history of aviation", "airports", "hotel management",
    "restaurant kitchens", "street markets", "the history of cities", "census taking", "statistics in daily life",
    "probability and games of chance", "the history of mathematics", "geometry in architecture",
    "cryptography", "codes and ciphers in wartime", "diplomacy", "the history of trade unions",
    "child development", "teaching reading to children", "universities", "scientific peer review",
    "clinical trials", "pharmacies", "dentistry", "veterinary medicine", "zoos and conservation",
    "wolves", "whales", "ants", "mushrooms", "the history of gardens", "lawn care", "trees in cities",
    "weather stations", "ocean currents", "tides", "the history of navigation", "harbours", "shipbuilding",
    "road maintenance", "traffic lights", "parking policy", "freight trains", "high-speed rail",
    "the history of electricity", "power stations", "nuclear energy", "oil refining", "natural gas",
    "energy efficiency at home", "insulating buildings", "the history of furniture", "fashion design",
    "shoe making", "knitting", "the history of toys", "board games", "libraries of the ancient world",
)


def essay_prompts(n: int | None = None, seed: int = 0) -> list[str]:
    """``n`` prompts (default: one per pair) in a seeded random order over all ``FORMS x SUBJECTS`` (repeating after
    all pairs)."""
    if n is None:
        n = len(FORMS) * len(SUBJECTS)
    if n < 1:
        raise ValueError(f"n: got {n!r}; allowed: an integer >= 1")
    every = [form.format(subject) for subject in SUBJECTS for form in FORMS]
    order = list(range(len(every)))
    random.Random(seed).shuffle(order)
    return [every[order[i % len(order)]] for i in range(n)]
