"""Public-domain passages for the engine's tests and benchmarks: the two of
the KV fixture (tools/kv_fixture/make_fixture.py) plus two more."""

from .weights import public_domain_texts

# Abraham Lincoln, the Gettysburg Address (1863, Bliss copy).
GETTYSBURG = """\
Four score and seven years ago our fathers brought forth on this continent, a \
new nation, conceived in Liberty, and dedicated to the proposition that all men \
are created equal.

Now we are engaged in a great civil war, testing whether that nation, or any \
nation so conceived and so dedicated, can long endure. We are met on a great \
battle-field of that war. We have come to dedicate a portion of that field, as \
a final resting place for those who here gave their lives that that nation \
might live. It is altogether fitting and proper that we should do this.

But, in a larger sense, we can not dedicate -- we can not consecrate -- we can \
not hallow -- this ground. The brave men, living and dead, who struggled here, \
have consecrated it, far above our poor power to add or detract. The world will \
little note, nor long remember what we say here, but it can never forget what \
they did here. It is for us the living, rather, to be dedicated here to the \
unfinished work which they who fought here have thus far so nobly advanced. It \
is rather for us to be here dedicated to the great task remaining before us -- \
that from these honored dead we take increased devotion to that cause for which \
they gave the last full measure of devotion -- that we here highly resolve that \
these dead shall not have died in vain -- that this nation, under God, shall \
have a new birth of freedom -- and that government of the people, by the \
people, for the people, shall not perish from the earth.
"""

# Herman Melville, Moby-Dick (1851), the opening of chapter 1.
MOBY_DICK = """\
Call me Ishmael. Some years ago -- never mind how long precisely -- having \
little or no money in my purse, and nothing particular to interest me on shore, \
I thought I would sail about a little and see the watery part of the world. It \
is a way I have of driving off the spleen and regulating the circulation. \
Whenever I find myself growing grim about the mouth; whenever it is a damp, \
drizzly November in my soul; whenever I find myself involuntarily pausing \
before coffin warehouses, and bringing up the rear of every funeral I meet; and \
especially whenever my hypos get such an upper hand of me, that it requires a \
strong moral principle to prevent me from deliberately stepping into the \
street, and methodically knocking people's hats off -- then, I account it high \
time to get to sea as soon as I can. This is my substitute for pistol and ball. \
With a philosophical flourish Cato throws himself upon his sword; I quietly \
take to the ship. There is nothing surprising in this. If they but knew it, \
almost all men in their degree, some time or other, cherish very nearly the \
same feelings towards the ocean with me.
"""


def passages():
    """{name: text}, in a fixed order."""
    t = public_domain_texts()
    return {"pride_and_prejudice": t["pride_and_prejudice"], "declaration": t["declaration"],
            "gettysburg": GETTYSBURG, "moby_dick": MOBY_DICK}
