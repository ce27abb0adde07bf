// placeholder: the fixture tests land with the fixture
